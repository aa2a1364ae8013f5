"""CFA: Coupled-hypersphere-based Feature Adaptation (Lee, Lee, Song; IEEE Access 2022, arXiv 2206.04325).

A learned patch descriptor maps frozen backbone features into a space where the
per-location mean training descriptors are hypersphere centres; the anomaly map is
each patch's softmin-weighted distance to its nearest centres.
"""

from uad.methods import MethodSpec
from uad.methods.cfa.params import Params

SPEC = MethodSpec(name="cfa", label="CFA", title="Coupled-hypersphere-based Feature Adaptation",
                  paper="Lee, Lee, Song; IEEE Access 2022; arXiv 2206.04325", params=Params, model="model:CFA")
