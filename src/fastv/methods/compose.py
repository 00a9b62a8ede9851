"""Composition "pre+llm": a method that cuts before the language model, then one that cuts inside it.

The strongest published results combine the two (e.g. VisionZip before the LLM, then FastV at layer
2). Both run as one schedule on one engine: the pre-LM method's stages (layer 0) come first, the
in-LLM method's stages (layers >= 1) rank only the tokens the first one kept.

Budget split rule (one rule, for every pair): `keep` is the final budget, in the in-LLM method's own
terms (FastV: visual tokens kept per sample); the pre-LM method keeps `pre_keep` visual tokens per
image, by default 2 x keep, so the in-LLM cut halves what reaches it. E.g. visionzip+fastv with
keep=48 on a 144-token image: VisionZip keeps 96 (merged context included), FastV keeps 48 of them
from layer k on. `ratio` is not accepted here: give keep (and pre_keep to choose the split).

Supported pairs: first = a method whose every cut is at layer 0 (visionzip, divprune, pool, and
random/uniform at k=0); second = fastv or fastv_mean (or random with k >= 1). pdrop is refused as
the second method: its layer-average budget is defined over the image's full token count, which a
pre-LM cut changes. Each part keeps its own default positions (VisionZip's contiguous block, then
FastV keeps those positions) unless `positions` is given for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from fastv.core.errors import FastVError
from fastv.core.stages import Stage
from fastv.methods.base import Method
from fastv.methods.registry import METHODS
from fastv.methods.registry import make_single as make

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle
    from fastv.core.hf.families import Adapter

IN_LLM_REFUSED = {
    "pdrop": "its layer-average budget is defined over the image's full token count, which a pre-LM cut changes",
}


@dataclass(kw_only=True)
class Composite(Method):
    """`first` (before the LM) then `second` (inside it), e.g. Composite(first="visionzip", second="fastv",
    keep=48). keep: the final budget (the second method's); pre_keep: per image after the first (default
    2 x keep); k: the second method's layer, where it has one."""

    first: str = "visionzip"
    second: str = "fastv"
    pre_keep: int | None = None
    k: int | None = None
    parts: tuple[Method, Method] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ratio is not None:
            raise FastVError(f"{self.first}+{self.second}: give keep (the final budget), not ratio")
        super().__post_init__()
        for part in (self.first, self.second):
            if part not in METHODS:
                raise FastVError(
                    f"unknown method {part!r} in {self.first}+{self.second}: choose from {', '.join(METHODS)}"
                )
        if self.second in IN_LLM_REFUSED:
            raise FastVError(f"{self.second} cannot follow a pre-LM method: {IN_LLM_REFUSED[self.second]}")
        self.name = f"{self.first}+{self.second}"
        pre_keep = 2 * self.keep if self.pre_keep is None else self.pre_keep
        if pre_keep < self.keep:
            raise FastVError(f"{self.name}: pre_keep={pre_keep} is below keep={self.keep}; the second cut only removes")
        common = dict(mode=self.mode, seed=self.seed, require_visual=self.require_visual, positions=self.positions)
        second = dict(common, keep=self.keep)
        if self.k is not None:
            if "k" not in {f for f in METHODS[self.second].__dataclass_fields__}:
                raise FastVError(f"{self.name}: {self.second} has no setting k")
            second["k"] = self.k
        elif self.second == "random":
            second["k"] = 2  # the in-LLM role: FastV's default layer
        self.parts = (make(self.first, keep=pre_keep, **common), make(self.second, **second))
        self.k = getattr(self.parts[1], "k", None)

    @property
    def position_mode(self):  # each part's own (see the module doc)
        return self.positions or "per part"

    def stages(self, adapter: Adapter) -> list[Stage]:
        return self.build(adapter)

    def visual_tokens_per_layer(self, num_layers: int, n: int) -> list[int]:
        """The in-LLM part counts from what the pre-LM part kept."""
        if self.mode == "mask":
            return [n] * num_layers
        pre = self.parts[0].visual_tokens_per_layer(num_layers, n)
        post = self.parts[1].visual_tokens_per_layer(num_layers, pre[0])
        return [min(a, b) for a, b in zip(pre, post, strict=True)]

    def build(self, adapter: Adapter) -> list[Stage]:
        pre, llm = (p.build(adapter) for p in self.parts)
        if any(s.layer != 0 for s in pre):
            raise FastVError(f"{self.name}: {self.first} must cut before the language model (layer 0) to come first")
        if any(s.layer == 0 for s in llm):
            raise FastVError(f"{self.name}: {self.second} must cut inside the language model (k >= 1) to come second")
        return [*pre, *llm]

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        return [undo for p in self.parts for undo in p.prepare(handle)]
