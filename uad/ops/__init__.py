"""Kernels every method may use: nearest-neighbour search, k-means, smoothing, coreset selection.

Each module is batched on the device and free of Python loops over pixels or patches; a
method imports only the modules it needs, so its pipeline stages depend on those alone.
"""
