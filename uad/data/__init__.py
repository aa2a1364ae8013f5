"""Datasets: sources in MVTec layout, safe downloads and extraction, the prepared cache."""
