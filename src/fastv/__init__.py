"""fastv: FastV visual-token pruning for Hugging Face vision-language models."""

from fastv import compat
from fastv.engine import PruneHandle
from fastv.errors import FastVError, UnsupportedModelError
from fastv.families import FAMILIES, resolve
from fastv.methods import METHODS, FastV, FastVMean, Method, make
from fastv.stats import PruneStats


def load_default(*args, **kwargs):
    """The shipped default model and its processor (see `fastv.default_model.load_default`)."""
    from fastv.default_model import load_default as _load

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
