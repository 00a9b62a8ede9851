"""fastv: FastV visual-token pruning for Hugging Face vision-language models."""

from fastv.core.engine import PruneHandle
from fastv.core.errors import FastVError, UnsupportedModelError
from fastv.core.hf import compat
from fastv.core.hf.families import FAMILIES, resolve
from fastv.core.stats import PruneStats
from fastv.methods import METHODS, FastV, FastVMean, Method, make


def load_default(*args, **kwargs):
    """The shipped default model and its processor (see `fastv.zoo.default_model.load_default`)."""
    from fastv.zoo.default_model import load_default as _load

    return _load(*args, **kwargs)


__all__ = [
    "FAMILIES",
    "METHODS",
    "FastV",
    "FastVMean",
    "Method",
    "make",
    "FastVError",
    "PruneHandle",
    "PruneStats",
    "UnsupportedModelError",
    "load_default",
    "resolve",
]
__version__ = "0.1.0"

compat.warn_if_untested()
