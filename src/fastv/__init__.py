"""fastv: FastV visual-token pruning for Hugging Face vision-language models."""

from fastv.engine import PruneHandle
from fastv.errors import FastVError, UnsupportedModelError
from fastv.families import FAMILIES, resolve
from fastv.methods import METHODS, FastV, FastVMean, Method, make
from fastv.stats import PruneStats

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
    "resolve",
]
__version__ = "0.1.0"
