"""PaDiM: a Patch Distribution Modeling framework (Defard, Setkov, Loesch, Audigier; ICPR 2021, arXiv 2011.08785).

Each patch position of the training images gets a multivariate Gaussian of d randomly
selected channels of concatenated frozen backbone features; the anomaly map is the
Mahalanobis distance of each test patch to its position's Gaussian.
"""

from uad.methods import MethodSpec
from uad.methods.padim.params import Params

SPEC = MethodSpec(name="padim", label="PaDiM", title="Patch Distribution Modeling",
                  paper="Defard, Setkov, Loesch, Audigier; ICPR 2021; arXiv 2011.08785", params=Params,
                  model="model:PaDiM")
