"""The results of an attention analysis: one prompt's `Analysis` (and its JSON), and the `Aggregate` of many."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fastv.analysis.layout import GROUPS, Panel
from fastv.core.errors import FastVError


# ---- result -----------------------------------------------------------------------------------
@dataclass
class Analysis:
    """Attention allocation of one prompt. Positions are local: padding removed, 0 = first real token."""

    family: str
    layers: list[int]
    query: str
    input_ids: list[int]
    labels: torch.Tensor  # (L,) group index per position
    prompt_len: int
    share: torch.Tensor  # (n_layers, n_groups)
    attention: torch.Tensor  # (n_layers, L) query rows' head-averaged attention to each position
    panels: list[Panel]
    k: int | None  # the method's layer, where it has one
    ratio: float | None  # the method's share dropped, when its budget is a ratio
    kept: list[int]  # visual positions the method keeps (all cuts done)
    matrix_layer: int | None = None
    matrix: torch.Tensor | None = None  # (L, L) head-averaged attention of `matrix_layer`
    images: dict[tuple[str, int], list[np.ndarray]] = field(default_factory=dict)  # (kind, index) -> frames
    notes: list[str] = field(default_factory=list)
    method: str = "fastv k=2 r=0.5"  # which method's kept tokens `kept` holds (`fastv.run.describe`)

    @property
    def counts(self) -> dict[str, int]:
        return {g: int((self.labels == i).sum()) for i, g in enumerate(GROUPS)}

    @property
    def efficiency(self) -> torch.Tensor:
        """(n_layers, n_groups) share per token of each group (the paper's attention efficiency); nan if empty."""
        n = torch.tensor([self.counts[g] for g in GROUPS], dtype=torch.float32)
        return self.share / n.where(n > 0, torch.tensor(float("nan")))

    def groups_present(self) -> list[str]:
        return [g for g, c in self.counts.items() if c > 0]

    def layer_row(self, layer: int) -> int:
        return self.layers.index(layer)

    def visual_grid(self, layer: int, panel: Panel) -> np.ndarray:
        """The query's attention to one panel's tokens at `layer`, as a (rows, cols) array."""
        values = self.attention[self.layer_row(layer), panel.positions]
        return values.reshape(panel.shape).numpy()

    def kept_grid(self, panel: Panel) -> np.ndarray:
        kept = set(self.kept)
        return np.array([p in kept for p in panel.positions]).reshape(panel.shape)

    def to_json(self) -> dict[str, Any]:
        eff = self.efficiency
        return {
            "family": self.family,
            "query": self.query,
            "groups": list(GROUPS),
            "group_counts": self.counts,
            "prompt_len": self.prompt_len,
            "output_len": len(self.input_ids) - self.prompt_len,
            "layers": [
                {
                    "layer": layer,
                    "share": _floats(dict(zip(GROUPS, self.share[i].tolist(), strict=True))),
                    "efficiency": _floats(dict(zip(GROUPS, eff[i].tolist(), strict=True))),
                    "visual_attention": [_floats(self.visual_grid(layer, p).tolist()) for p in self.panels],
                }
                for i, layer in enumerate(self.layers)
            ],
            "visual_layout": [p.to_json() for p in self.panels],
            "kept": {
                "method": self.method,
                "k": self.k,
                "ratio": self.ratio,
                "kept_positions": self.kept,
                "kept_grid": [np.argwhere(self.kept_grid(p)).tolist() for p in self.panels],
            },
            "matrix_layer": self.matrix_layer,
            "notes": self.notes,
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(dumps(self.to_json()))
        return path

    def light(self) -> Analysis:
        """A copy without per-token attention, matrix and pictures: enough to aggregate thousands."""
        return replace(self, attention=self.attention[:, :0], matrix=None, images={}, panels=[])


def dumps(obj: Any) -> str:
    """Indented JSON with every list of plain numbers on one line (grids stay readable)."""
    text = json.dumps(obj, indent=1)
    return re.sub(r"\[\s+([^\[\]{}\"]*?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)


def _floats(obj: Any) -> Any:
    """JSON has no NaN: empty groups get null."""
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, 7)
    if isinstance(obj, dict):
        return {k: _floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_floats(v) for v in obj]
    return obj


# ---- aggregation ------------------------------------------------------------------------------
@dataclass
class Aggregate:
    """Mean (and spread) of the allocation per layer over many prompts."""

    layers: list[int]
    query: str
    n: int
    share: torch.Tensor  # (n_layers, n_groups) mean share
    share_std: torch.Tensor
    efficiency: torch.Tensor  # mean efficiency (nan-ignoring)
    counts: dict[str, float]  # mean tokens per group
    names: list[str] = field(default_factory=list)

    def groups_present(self) -> list[str]:
        return [g for g, c in self.counts.items() if c > 0]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_samples": self.n,
            "query": self.query,
            "groups": list(GROUPS),
            "mean_group_counts": _floats(self.counts),
            "layers": [
                {
                    "layer": layer,
                    "share_mean": _floats(dict(zip(GROUPS, self.share[i].tolist(), strict=True))),
                    "share_std": _floats(dict(zip(GROUPS, self.share_std[i].tolist(), strict=True))),
                    "efficiency_mean": _floats(dict(zip(GROUPS, self.efficiency[i].tolist(), strict=True))),
                }
                for i, layer in enumerate(self.layers)
            ],
            "samples": self.names,
        }

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(dumps(self.to_json()))
        return path


def aggregate(results: Sequence[Analysis], names: Sequence[str] | None = None) -> Aggregate:
    """Mean allocation per layer over analyses that share their layers and query."""
    if not results:
        raise FastVError("nothing to aggregate")
    first = results[0]
    if any(r.layers != first.layers or r.query != first.query for r in results):
        raise FastVError("analyses to aggregate must use the same layers and query")
    shares = torch.stack([r.share for r in results])
    eff = torch.stack([r.efficiency for r in results])
    counts = {g: float(np.mean([r.counts[g] for r in results])) for g in GROUPS}
    return Aggregate(
        layers=list(first.layers),
        query=first.query,
        n=len(results),
        share=shares.mean(0),
        share_std=shares.std(0, unbiased=False),
        efficiency=eff.nanmean(0),
        counts=counts,
        names=list(names or []),
    )
