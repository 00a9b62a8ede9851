"""Positions of the kept tokens after a cut: the original ones, or renumbered contiguously.

Official FastV keeps each kept token's original position; the official PDrop, VisionZip and DivPrune
rebuild the sequence without the dropped tokens, so the kept ones are renumbered 0, 1, 2, ... as if
the dropped tokens had never been in the prompt. fastv offers both (`Stage.positions`).

We never call a model's rotary embedding. Every layer already receives the rotary table of the full
prompt, one column per prompt column, and that table is all a cut needs:

- prefill: a kept token that is the r-th kept one (pads and text included, fillers excluded) takes
  column r of the table, i.e. the position that column has in the full prompt. With left padding
  that is still right, because pads are kept and counted.
- decode: a new token at original position P must sit at P - s, where s is the number of tokens the
  cut removed before it (per sample). Rotary tables are cos/sin of position x frequency, so the
  table at P - s is the table at P rotated by -s: z(P - s) = z(P) z(p - s) / z(p) for any kept
  position p, as complex numbers z = cos + i sin, elementwise. We take p = the last prompt token
  and read both factors from the prefill table, so the rotation is exact for every RoPE layout,
  partial rotary dims, attention scaling (it cancels) and per-layer-type tables (Gemma3).

A column map (B, L) tells, for each original position, which table column its current position is;
stages compose: "original" keeps the previous stage's map, "contiguous" renumbers the survivors.
Multimodal RoPE (Qwen-VL's 3-row positions) has no 1D renumbering: it is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fastv.core.errors import FastVError
from fastv.core.hf import compat
from fastv.core.selection import Selection

MROPE_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def check_supported(model_type: str, method_name: str) -> None:
    if model_type in MROPE_MODEL_TYPES:
        raise FastVError(
            f"{method_name}: positions='contiguous' renumbers 1D positions, but {model_type} uses multimodal "
            "RoPE (3-row positions over the image grid); use positions='original'"
        )


@dataclass
class StagePositions:
    """Where one stage's kept tokens sit in the full prompt's rotary table."""

    columns: torch.Tensor  # (B, L) per original position, its table column from this stage on
    slots: torch.Tensor  # (B, W) the table column of each row the stage's layers compute
    shift: torch.Tensor  # (B,) tokens removed before the last prompt token (decode shift)


def first_columns(batch: int, length: int, device: torch.device) -> torch.Tensor:
    """The map before any cut: every position is its own column."""
    return torch.arange(length, device=device).expand(batch, -1)


def renumber(previous: torch.Tensor, keep_mask: torch.Tensor, rows: torch.Tensor, contiguous: bool) -> StagePositions:
    """A stage's positions. previous: the column map before it; keep_mask (B, L): kept positions
    (fillers excluded); rows (B, W): the original positions its layers compute (all L in mask mode)."""
    columns = (keep_mask.long().cumsum(1) - 1).clamp(min=0) if contiguous else previous
    slots = columns.gather(1, rows)
    length = keep_mask.shape[1]
    return StagePositions(columns, slots, (length - 1) - slots[:, -1])


def take_columns(t: torch.Tensor, slots: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Columns `slots` (B, W) of `t` along `seq_dim`; t's batch dim, just before it, may be 1."""
    seq_dim %= t.ndim
    bdim = seq_dim - 1
    b, n = slots.shape
    shape = list(t.shape)
    shape[bdim] = b
    t = t.expand(shape)
    view = [1] * t.ndim
    view[bdim], view[seq_dim] = b, n
    shape[seq_dim] = n
    return t.gather(seq_dim, slots.view(view).expand(shape))


def prefill_embeddings(pe: tuple[torch.Tensor, ...], slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The (cos, sin) rows of the slots' positions, from the full prompt's table (B|1, L, D)."""
    return tuple(take_columns(t, slots, -2) for t in pe)


def decode_rotation(pe: tuple[torch.Tensor, torch.Tensor], at: StagePositions) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, D) complex factor z(p - s) / z(p) from the full prompt's table, p = the last prompt token."""
    if len(pe) != 2:
        raise FastVError(f"positions='contiguous' needs (cos, sin) position embeddings, got {len(pe)} tensors")
    cos, sin = (t.float() for t in pe)
    length = cos.shape[-2]
    batch = at.slots.shape[0]
    last = torch.full((batch, 1), length - 1, device=at.slots.device)
    c0, s0 = (take_columns(t, last, -2) for t in (cos, sin))
    c1, s1 = (take_columns(t, at.slots[:, -1:], -2) for t in (cos, sin))
    norm = (c0 * c0 + s0 * s0).clamp(min=torch.finfo(torch.float32).tiny)
    return (c1 * c0 + s1 * s0) / norm, (s1 * c0 - c1 * s0) / norm


def rotate(pe: tuple[torch.Tensor, torch.Tensor], factor: tuple[torch.Tensor, torch.Tensor]):
    """The (cos, sin) table of positions moved by the factor's shift (complex product, elementwise)."""
    cos, sin = pe
    fc, fs = factor
    c, s = cos.float(), sin.float()
    return (c * fc - s * fs).to(cos.dtype), (s * fc + c * fs).to(sin.dtype)


Memo = Callable[[Any, Any, Callable[[Any], Any]], Any]  # (key, obj, fn) -> fn(obj), once per forward


class Renumbering:
    """One handle's position bookkeeping when some stage renumbers (`positions="contiguous"`).

    Per prefill it records each stage's `StagePositions` as the stages cut, and the decode-step
    rotation of each layer from the prefill's rotary table; `apply` gives a layer its stage's
    position embeddings and ids, at prefill and at every decode step.
    """

    def __init__(self, contiguous: list[bool]) -> None:
        self.contiguous = contiguous  # per stage
        self.stages: list[StagePositions] = []
        self.rotations: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # layer -> decode position shift

    def reset(self) -> None:
        self.stages, self.rotations = [], {}

    def add(self, sel: Selection, drop: bool) -> None:
        """The next stage's table columns: kept as before, or renumbered."""
        n, keep = len(self.stages), sel.keep_mask
        previous = self.stages[-1].columns if n else first_columns(*keep.shape, keep.device)
        rows = sel.index if drop else first_columns(*keep.shape, keep.device)
        self.stages.append(renumber(previous, keep, rows, self.contiguous[n]))

    def apply(self, i: int, n: int, kwargs: dict, pe: Any, ids: Any, prefill: bool, memo: Memo) -> dict:
        """Layer i (stage n)'s kwargs with its stage's positions.

        pe, ids: the position embeddings and ids the layer received (the full prompt's at prefill).
        """
        if n >= len(self.stages):
            return kwargs
        at = self.stages[n]
        if prefill:
            if pe is not None:
                kwargs[compat.POSITION_EMBEDDINGS] = memo(("pe", n), pe, lambda p: prefill_embeddings(p, at.slots))
                self.rotations[i] = memo(("rot", n), pe, lambda p: decode_rotation(p, at))
            if ids is not None:
                kwargs[compat.POSITION_IDS] = memo(("ids", n), ids, lambda p: take_columns(p, at.slots, -1))
            return kwargs
        if pe is not None:
            kwargs[compat.POSITION_EMBEDDINGS] = memo(("pe", n), pe, lambda p: rotate(p, self.rotations[i]))
        if ids is not None:
            kwargs[compat.POSITION_IDS] = memo(("ids", n), ids, lambda p: p - at.shift.view(-1, 1).to(p.dtype))
        return kwargs
