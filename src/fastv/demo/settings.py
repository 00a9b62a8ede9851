"""The demo page's knobs, parsed from a request's raw values into the method they describe."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fastv import run
from fastv.core.errors import FastVError
from fastv.methods import Method


@dataclass(frozen=True)
class Settings:
    """The page's knobs: the method, K (its layer, where it has one), R (share dropped) or a budget
    `keep` (visual tokens kept, instead of R), and FastV's scorer."""

    k: int = 2
    ratio: float = 0.5
    scorer: str = "last_token"
    method: str = "fastv"
    keep: int | None = None

    @classmethod
    def parse(cls, k: Any, ratio: Any, scorer: Any, method: Any = "fastv", keep: Any = None) -> Settings:
        """Settings from a request's raw values: K a whole number (2.5 is refused, not truncated),
        R a finite number, keep empty or a whole number, the scorer and method strings; the method
        checks its own settings against the model (`Demo`)."""
        try:
            k_value, r_value = float(k), float(ratio)
        except (TypeError, ValueError) as err:
            raise FastVError(f"K={k!r} and R={ratio!r} must be numbers") from err
        if not math.isfinite(k_value) or k_value != int(k_value):
            raise FastVError(f"K={k}: K is a layer index, give a whole number")
        if not math.isfinite(r_value):
            raise FastVError(f"R={ratio}: give a share between 0 and 1, e.g. 0.5")
        if not isinstance(scorer, str):
            raise FastVError(f"scorer={scorer!r}: choose 'last_token' or 'random'")
        if not isinstance(method, str) or not method.strip():
            raise FastVError(f"method={method!r}: choose one of `fastv methods`, e.g. fastv")
        keep_value = None
        if keep is not None and str(keep).strip() != "":
            try:
                keep_value = float(keep)
            except (TypeError, ValueError) as err:
                raise FastVError(f"keep={keep!r}: give a whole number of visual tokens, or leave it empty") from err
            if not math.isfinite(keep_value) or keep_value != int(keep_value):
                raise FastVError(f"keep={keep}: give a whole number of visual tokens, or leave it empty to use R")
        return cls(int(k_value), r_value, scorer, method.strip(), None if keep_value is None else int(keep_value))

    def label(self) -> str:
        """What the page calls the pruned run: 'fastv k=2 r=0.5', 'pool keep=64'."""
        return run.describe(self.method_for())

    def method_for(self) -> Method:
        """The method these settings describe; it refuses what it cannot do (`fastv.run.method_from_options`)."""
        ratio = None if self.keep is not None else self.ratio
        return run.method_from_options(self.method, k=self.k, ratio=ratio, keep=self.keep, scorer=self.scorer)
