"""Token-reduction methods on one engine; FastV is the default."""

from __future__ import annotations

from dataclasses import fields

from fastv.core.errors import FastVError
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method
from fastv.methods.cdpruner import CDPruner
from fastv.methods.compose import Composite
from fastv.methods.dart import DART
from fastv.methods.divprune import DivPrune
from fastv.methods.fastv import FastV, FastVMean
from fastv.methods.flowcut import FlowCut
from fastv.methods.holitom import HoliTom
from fastv.methods.holov import HoloV
from fastv.methods.pdrop import PDrop
from fastv.methods.pool import Pool
from fastv.methods.random_uniform import RandomPrune, Uniform
from fastv.methods.registry import ABOUT, ANY, GRID, METHODS, About, make_single  # noqa: F401
from fastv.methods.sparsevlm import SparseVLM
from fastv.methods.visionzip import VisionZip
from fastv.methods.vscan import VScan

COMPOSITION = About(
    "A+B: a pre-LM method, then an in-LLM one (fastv.methods.compose)",
    "before the LM, then inside it",
    "keep = B's final budget; A keeps pre_keep (default 2 x keep) per image",
    "those both support",
)


def method_class(name: str) -> type[Method]:
    """The class `make(name)` builds: a registered method, or Composite for "a+b"."""
    if "+" in name:
        first, _, second = name.partition("+")
        if not first or not second or "+" in second:
            raise FastVError(f"method {name!r}: compose exactly two methods, e.g. visionzip+fastv")
        return Composite
    if name not in METHODS:
        raise FastVError(f"unknown method {name!r}: choose one of {', '.join(METHODS)} (or compose two: a+b)")
    return METHODS[name]


def make(name: str, **settings) -> Method:
    """A method by name, e.g. make("fastv", k=2, keep=192) or make("pool", keep=144).

    Settings given as None count as not given. A setting the method does not have (e.g. k for
    pool, which always cuts before the language model) is refused with the method's own settings.
    """
    cls = method_class(name)
    if cls is not Composite:
        return make_single(name, **settings)
    known = {f.name for f in fields(cls) if f.init} - {"first", "second"}
    given = {key: value for key, value in settings.items() if value is not None}
    unknown = sorted(set(given) - known)
    if unknown:
        raise FastVError(
            f"method {name!r} has no setting {', '.join(unknown)}; its settings: {', '.join(sorted(known))}"
        )
    first, _, second = name.partition("+")
    return Composite(first=first, second=second, **given)


__all__ = [
    "ABOUT",
    "COMPOSITION",
    "CDPruner",
    "DART",
    "METHODS",
    "Composite",
    "DivPrune",
    "FastV",
    "FastVMean",
    "FlowCut",
    "HoliTom",
    "HoloV",
    "Method",
    "PDrop",
    "Pool",
    "RandomPrune",
    "SparseVLM",
    "Stage",
    "StageContext",
    "Uniform",
    "VisionZip",
    "VScan",
    "make",
    "method_class",
]
