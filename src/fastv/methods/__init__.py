"""Token-reduction methods on one engine; FastV is the default."""

from __future__ import annotations

from fastv.errors import FastVError
from fastv.methods.base import Method, Stage, StageContext
from fastv.methods.fastv import FastV, FastVMean

METHODS: dict[str, type[Method]] = {"fastv": FastV, "fastv_mean": FastVMean}


def make(name: str, **settings) -> Method:
    """A method by name, e.g. make("fastv", k=2, keep=192)."""
    if name not in METHODS:
        raise FastVError(f"unknown method {name!r}: choose one of {', '.join(METHODS)}")
    return METHODS[name](**settings)


__all__ = ["METHODS", "FastV", "FastVMean", "Method", "Stage", "StageContext", "make"]
