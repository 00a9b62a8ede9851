"""The registered single methods by name, with what `fastv methods` lists for each.

A module of its own so that `fastv.methods.compose` can build its two parts by name without importing
the package that imports it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from fastv.core.errors import FastVError
from fastv.methods.base import Method
from fastv.methods.cdpruner import CDPruner
from fastv.methods.dart import DART
from fastv.methods.divprune import DivPrune
from fastv.methods.fastv import FastV, FastVMean
from fastv.methods.flowcut import FlowCut
from fastv.methods.holitom import HoliTom
from fastv.methods.holov import HoloV
from fastv.methods.pdrop import PDrop
from fastv.methods.pool import Pool
from fastv.methods.random_uniform import RandomPrune, Uniform
from fastv.methods.sparsevlm import SparseVLM
from fastv.methods.visionzip import VisionZip
from fastv.methods.vscan import VScan

METHODS: dict[str, type[Method]] = {
    "fastv": FastV,
    "fastv_mean": FastVMean,
    "random": RandomPrune,
    "uniform": Uniform,
    "pool": Pool,
    "pdrop": PDrop,
    "visionzip": VisionZip,
    "divprune": DivPrune,
    "dart": DART,
    "cdpruner": CDPruner,
    "holov": HoloV,
    "flowcut": FlowCut,
    "sparsevlm": SparseVLM,
    "vscan": VScan,
    "holitom": HoliTom,
}

ANY = "every supported family"
GRID = "LLaVA-1.5, Video-LLaVA images (square grid)"


@dataclass(frozen=True)
class About:
    """What `fastv methods` lists for one method."""

    paper: str
    where: str
    budget: str
    families: str


ABOUT: dict[str, About] = {
    "fastv": About("FastV, arXiv 2403.06764", "layer k (default 2)", "per sample, one cut", ANY),
    "fastv_mean": About("FastV (Sec. 4 text), arXiv 2403.06764", "layer k (default 2)", "per sample, one cut", ANY),
    "random": About(
        "baseline (EffiVLM-Bench, UniPruneBench)",
        "layer k (default 0: before the LM)",
        "per image",
        f"{ANY} (Qwen3-VL: k >= deepstack depth)",
    ),
    "uniform": About("baseline: even grid subset", "layer k (default 0)", "per image, rows x cols", GRID),
    "pool": About("baseline: average pooling (VTC-Bench)", "before the LM", "per image, rows x cols", GRID),
    "pdrop": About(
        "PDrop, arXiv 2410.17247",
        "layers L/4, L/2, 3L/4 (scored at the cut layer)",
        "per image, mean per layer",
        f"{ANY} (contiguous positions: not Qwen-VL)",
    ),
    "visionzip": About("VisionZip, arXiv 2412.04467", "vision tower + before the LM", "per image", "LLaVA-1.5"),
    "divprune": About(
        "DivPrune, arXiv 2503.02175",
        "before the LM",
        "per image",
        f"{ANY} but Qwen3-VL (deepstack); contiguous positions: not Qwen-VL",
    ),
    "dart": About("DART, arXiv 2502.11494", "layer k (default 2)", "per image", f"{ANY} (Qwen3-VL: k >= deepstack)"),
    "cdpruner": About("CDPruner, arXiv 2506.10967 (LM relevance)", "before the LM", "per image", f"{ANY} but Qwen3-VL"),
    "holov": About("HoloV, arXiv 2510.02912", "before the LM (vision tower's CLS attention)", "per image", "LLaVA-1.5"),
    "flowcut": About("FlowCut, arXiv 2505.19536", "inside the vision tower (progressive)", "per image", "LLaVA-1.5"),
    "sparsevlm": About("SparseVLM v1.0, arXiv 2410.04417", "after layers 2, 6, 15 of 32 (scaled)", "per image", ANY),
    "vscan": About("VScan, arXiv 2505.22654", "before the LM + layer L/2", "per image, mean per layer", "LLaVA-1.5"),
    "holitom": About(
        "HoliTom, arXiv 2505.21334",
        "before the LM (temporal + spatial merging) + layer 18/28 (merging)",
        "per video, entering the LM (halved from layer k)",
        "LLaVA-OneVision videos",
    ),
}


def make_single(name: str, **settings) -> Method:
    """A registered (not composed) method by name; settings it does not have are refused by name."""
    if name not in METHODS:
        raise FastVError(f"unknown method {name!r}: choose one of {', '.join(METHODS)} (or compose two: a+b)")
    cls = METHODS[name]
    known = {f.name for f in fields(cls) if f.init}
    given = {key: value for key, value in settings.items() if value is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise FastVError(
            f"method {name!r} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(known))}"
        )
    return cls(**given)
