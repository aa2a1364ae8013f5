"""DFR: Deep Feature Reconstruction (Shi, Yang, Qi; Neurocomputing 2021, arXiv 2012.07122).

Multi-scale regional features of a frozen backbone, reconstructed by a 1x1-convolutional
autoencoder trained on normal images; the anomaly map is the per-region reconstruction error.
"""

from uad.methods import MethodSpec
from uad.methods.dfr.params import Params

SPEC = MethodSpec(name="dfr", label="DFR", title="Deep Feature Reconstruction",
                  paper="Shi, Yang, Qi; Neurocomputing 2021; arXiv 2012.07122", params=Params, model="model:DFR")
