"""What a token-reduction method tells the engine: where to cut, how many to keep, how to rank.

A method is a small dataclass that turns its settings into `Stage`s. The engine (`PruneHandle`)
owns every hook; a stage only scores tokens (and, for merging methods, rewrites the kept rows).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

from fastv.core.engine import PruneHandle
from fastv.core.errors import FastVError

if TYPE_CHECKING:
    from fastv.core.hf.families import Adapter

from fastv.core.stages import Mode, Positions, Stage


@dataclass(kw_only=True)
class Method:
    """Common settings. `ratio` drops that share of the visual tokens; `keep` fixes how many stay.

    mode: "drop" removes pruned tokens (the speed-up); "mask" keeps them but hides them from
        attention after the cut (the reference our tests compare drop mode against).
    require_visual: raise instead of warning when a prompt holds no visual tokens.
    """

    ratio: float | None = None
    keep: int | None = None
    mode: Mode = "drop"
    seed: int = 0
    require_visual: bool = False
    positions: Positions | None = None  # None: the method's paper (`default_positions`)

    name = "method"
    # What the method's official code does after a cut: FastV keeps the original positions; PDrop,
    # VisionZip and DivPrune renumber the kept tokens contiguously. The other choice is fastv's variant.
    default_positions: ClassVar[Positions] = "original"

    def __post_init__(self) -> None:
        if self.ratio is not None and self.keep is not None:
            raise FastVError("give either ratio or keep, not both")
        if self.ratio is None and self.keep is None:
            self.ratio = 0.5
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise FastVError(f"ratio={self.ratio} is outside [0, 1): it is the share of visual tokens dropped")
        if self.keep is not None and self.keep < 0:
            raise FastVError(f"keep={self.keep} must be >= 0 visual tokens")
        if self.mode not in ("drop", "mask"):
            raise FastVError(f"mode={self.mode!r}: choose 'drop' or 'mask'")
        if self.positions not in (None, "original", "contiguous"):
            raise FastVError(f"positions={self.positions!r}: choose 'original' or 'contiguous'")

    @property
    def position_mode(self) -> Positions:
        """The positions this method's cuts give the kept tokens (see `Stage.positions`)."""
        return self.positions or self.default_positions

    def keep_count(self, n_visual: int) -> int:
        """Visual tokens kept of `n_visual` under a single cut."""
        if n_visual == 0:
            return 0
        if self.keep is not None:
            return self.keep
        return n_visual - round(self.ratio * n_visual)

    def stages(self, adapter: Adapter) -> list[Stage]:
        raise NotImplementedError

    def visual_tokens_per_layer(self, num_layers: int, n: int) -> list[int]:
        """Visual tokens of one n-token image that each decoder layer computes, without running the model
        (`fastv.methods.accounting`; with `fastv.flops.prefill_flops` it predicts the prefill FLOPs).

        This default is one cut: at layer `k` for methods that have one, else before the language model.
        Methods with several cuts, or counts of their own (recycled tokens), override it.
        """
        if self.mode == "mask":
            return [n] * num_layers  # masked tokens are still computed
        keep = self.keep_count(n)
        if not 0 <= keep <= n:
            raise FastVError(f"{self.name}: cannot keep {keep} of {n} visual tokens")
        k = int(getattr(self, "k", 0) or 0)
        return [n] * k + [keep] * (num_layers - k)

    def build(self, adapter: Adapter) -> list[Stage]:
        """The stages the engine runs: `stages()`, each giving its kept tokens this method's positions."""
        out = self.stages(adapter)
        for stage in out:
            stage.positions = self.position_mode
        return out

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        """Install method-specific observers (e.g. on the vision tower); return their undo callables."""
        return []

    def apply(self, model: torch.nn.Module) -> PruneHandle:
        """Install the method on `model`; the returned handle is a context manager and has `remove()`."""
        return PruneHandle(self, model)


def increasing_layers(name: str, layers: tuple | list | None, minimum: int) -> tuple[int, ...] | None:
    """A multi-cut method's `layers` as ints, refused unless strictly increasing from `minimum` on."""
    if layers is None:
        return None
    out = tuple(int(x) for x in layers)
    if not out or list(out) != sorted(set(out)) or out[0] < minimum:
        raise FastVError(f"{name} layers={out}: give increasing layers >= {minimum}")
    return out
