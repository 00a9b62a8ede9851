"""What a server's vision tower shows the pre-LM methods that rank by its [CLS] attention.

VisionZip and HoloV choose an image's tokens by the attention the vision tower's [CLS] token pays
them at the layer whose output the projector consumes. In transformers fastv observes that layer
with a tap during the prefill (`fastv.core.vision_taps`, `VisionZip.prepare`) and hands the stage
what it saw through `StageContext.extra`. A server runs the tower itself (vLLM: in its encoder
step), so its model class observes the same layer once, for every such method, and
`tower_extra` turns one image's observation into the `extra` that method's stage reads, exactly as
the method's own observers build it in transformers. A method that reads the tower gets one entry
in `READERS`; the observation (one hook, `fastv.serving.vllm_llava`) is shared.

Nothing here imports vLLM.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastv.core.errors import FastVError
from fastv.methods import HoloV, Method, VisionZip
from fastv.methods.holov import KEY as HOLOV_KEY
from fastv.methods.visionzip import KEY as VISIONZIP_KEY
from fastv.methods.visionzip import zip_image


@dataclass
class TowerView:
    """One image as the vision tower saw it at the projected layer.

    cls_attention: (T + 1,) the head-averaged attention of [CLS] (row 0) to each token, itself first.
    keys: (T + 1, d) the layer's keys, head-averaged.
    features: (n, Hv) what the projector takes: the T patches (strategy "default"), or [CLS] and the
        patches ("full"); projected: (n, H) the projector's output; project: the projector.
    """

    cls_attention: torch.Tensor
    keys: torch.Tensor
    features: torch.Tensor
    projected: torch.Tensor
    project: Callable[[torch.Tensor], torch.Tensor]

    @property
    def skip(self) -> int:
        """1 if the projector also takes [CLS] (strategy "full"), else 0."""
        return self.features.shape[0] + 1 - self.cls_attention.shape[0]


def _visionzip(method: VisionZip, view: TowerView) -> dict[str, Any]:
    """VisionZip's block, zipped from the patches as `VisionZip.prepare` zips them in transformers."""
    if method.with_cls:
        raise FastVError("visionzip with [CLS] needs contiguous positions, which this server does not run")
    dominant, contextual = method.split(view.features.shape[0])
    s = view.skip
    zipped = zip_image(
        view.cls_attention[1:],
        view.keys[1:],
        view.features[s:],
        view.projected[s:],
        None,
        dominant,
        contextual,
        view.project,
    )
    return {VISIONZIP_KEY: [zipped]}


def _holov(method: HoloV, view: TowerView) -> dict[str, Any]:
    """HoloV's [CLS] attention over the projected tokens, one image, as `record_cls_attention` stores it."""
    return {HOLOV_KEY: view.cls_attention[1 - view.skip :][None]}


READERS: dict[type[Method], Callable[[Any, TowerView], dict[str, Any]]] = {VisionZip: _visionzip, HoloV: _holov}


def reads_cls_attention(method: Method) -> bool:
    """Whether the method's stage ranks by the vision tower's [CLS] attention (a server must observe it)."""
    return type(method) in READERS


def tower_extra(method: Method, view: TowerView) -> dict[str, Any] | None:
    """The `StageContext.extra` the method's stage reads for this image (None: it reads nothing)."""
    reader = READERS.get(type(method))
    return None if reader is None else reader(method, view)
