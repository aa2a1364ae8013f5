"""PatchCore (Roth, Pemula, Zepeda, Schoelkopf, Brox, Gehler; CVPR 2022, arXiv 2106.08265).

Locally aware patch features of a frozen backbone, a memory bank of them subsampled by greedy
coreset selection, and each test patch's distance to its nearest memory item as the anomaly
map. Nothing is trained.
"""

from uad.methods import MethodSpec
from uad.methods.patchcore.params import Params

SPEC = MethodSpec(name="patchcore", label="PatchCore", title="Towards Total Recall in Industrial Anomaly Detection",
                  paper="Roth, Pemula, Zepeda, Schoelkopf, Brox, Gehler; CVPR 2022; arXiv 2106.08265", params=Params,
                  model="model:PatchCore")
