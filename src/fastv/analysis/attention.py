"""Where a model's attention goes, layer by layer: the evidence behind FastV (paper, section 3).

For one prompt we report, per decoder layer, the share of attention that the query token(s) pay
each token group (system prompt, visual tokens, user instruction, generated output) and the
attention efficiency (share / number of tokens in the group). We read attention the same way the
pruning engine scores it (`attention_tap.query_attention` on the model's own post-RoPE query and
key), so SDPA/flash models need no `output_attentions` and no eager attention, and only the query
rows we need are ever computed. The visual tokens' attention is also laid out on the image grid
(per image, per video frame) with the tokens a method keeps (FastV at (K, R) by default, any method
of `fastv.methods`): one prefill under that method reports them (`PruneStats.kept_positions`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from fastv import run
from fastv.analysis.overlay import unnormalize
from fastv.core.errors import FastVError
from fastv.core.hf.attention_tap import install, query_attention
from fastv.core.hf.families import Adapter, resolve
from fastv.methods import FastV, Method

GROUPS = ("system", "visual", "interleaved", "instruction", "output")
"""system: text before the first visual token; visual: image/video tokens; interleaved: text between
visual tokens (several images, frame separators); instruction: prompt text after the last visual
token; output: generated tokens."""

Query = Literal["last", "instruction", "output"]
QUERIES = ("last", "instruction", "output")
QWEN_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


# ---- visual-token layout ----------------------------------------------------------------------
@dataclass
class Panel:
    """One image (or one video frame) worth of visual tokens, laid out row-major on `shape`."""

    kind: str  # "image" | "video"
    index: int  # which image / video of this sample
    frame: int | None  # temporal index within a video (Qwen: one per temporal patch)
    shape: tuple[int, int]  # (rows, cols) of the token grid; (1, n) for a 1-D strip
    positions: list[int]  # sequence positions of the tokens, row-major
    exact: bool = True  # False when the family's layout is unknown and this is a strip or a guess

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "index": self.index,
            "frame": self.frame,
            "shape": list(self.shape),
            "exact": self.exact,
            "first_position": self.positions[0] if self.positions else None,
        }


def _runs(positions: list[int]) -> list[list[int]]:
    """Split sorted positions into contiguous runs."""
    runs: list[list[int]] = []
    for p in positions:
        if runs and p == runs[-1][-1] + 1:
            runs[-1].append(p)
        else:
            runs.append([p])
    return runs


def _square_or_strip(kind: str, index: int, pos: list[int], exact: bool) -> Panel:
    side = math.isqrt(len(pos))
    if side * side == len(pos):
        return Panel(kind, index, None, (side, side), pos, exact)
    return Panel(kind, index, None, (1, len(pos)), pos, False)


def _llava_panels(model: Any, ids: torch.Tensor, pixel_values: Any, counter: dict[str, int]) -> list[Panel]:
    """LLaVA-1.5: a (H/p) x (W/p) grid per image, taken from the pixel tensor (24x24 for 336 px)."""
    cfg = model.config
    pos = (ids == cfg.image_token_id).nonzero().squeeze(1).tolist()
    p = cfg.vision_config.patch_size
    if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4:
        h, w = pixel_values.shape[-2] // p, pixel_values.shape[-1] // p
    else:
        side = cfg.vision_config.image_size // p
        h, w = side, side
    cls = 1 if getattr(cfg, "vision_feature_select_strategy", "default") == "full" else 0
    n = h * w + cls
    if not pos or len(pos) % n:
        return [_square_or_strip("image", i, r, False) for i, r in enumerate(_runs(pos))]
    panels = []
    for i in range(len(pos) // n):
        chunk = pos[i * n + cls : (i + 1) * n]  # the class token (strategy "full") has no place
        panels.append(Panel("image", counter["image"], None, (h, w), chunk))
        counter["image"] += 1
    return panels


def _qwen_panels(model: Any, ids: torch.Tensor, inputs: dict[str, Any], counter: dict[str, int]) -> list[Panel]:
    """Qwen-VL: per image (t, h/m, w/m) merged tokens from `image_grid_thw`; video frames likewise."""
    cfg = model.config
    m = cfg.vision_config.spatial_merge_size
    panels = []
    for kind, tok in (("image", cfg.image_token_id), ("video", getattr(cfg, "video_token_id", None))):
        grid = inputs.get(f"{kind}_grid_thw")
        pos = (ids == tok).nonzero().squeeze(1).tolist() if tok is not None else []
        start, local = 0, 0
        while start < len(pos):
            if grid is None or counter[kind] >= len(grid):
                raise FastVError(f"more {kind} tokens than rows in {kind}_grid_thw")
            t, h, w = (int(v) for v in grid[counter[kind]])
            hh, ww = h // m, w // m
            for f in range(t):
                chunk = pos[start : start + hh * ww]
                panels.append(Panel(kind, local, f if kind == "video" else None, (hh, ww), chunk))
                start += hh * ww
            counter[kind] += 1
            local += 1
    return sorted(panels, key=lambda pn: pn.positions[0])


def _generic_panels(adapter: Adapter, ids: torch.Tensor) -> list[Panel]:
    """Unknown layout: one panel per contiguous run; a square when the count is a perfect square.

    Gemma3's runs are its pooled square grid (`mm_tokens_per_image`, 16x16), so those are exact.
    """
    visual = torch.isin(ids, torch.tensor(adapter.visual_token_ids, device=ids.device))
    runs = _runs(visual.nonzero().squeeze(1).tolist())
    per_image = getattr(adapter.model.config, "mm_tokens_per_image", None)
    exact = [adapter.model.config.model_type == "gemma3" and len(r) == per_image for r in runs]
    return [_square_or_strip("image", i, r, e) for i, (r, e) in enumerate(zip(runs, exact, strict=True))]


def visual_layout(model: Any, input_ids: torch.Tensor, inputs: dict[str, Any] | None = None) -> list[list[Panel]]:
    """Per sample of a (padded) batch, its visual tokens as panels, in sequence coordinates.

    Exact for LLaVA-1.5 (square grid per image) and Qwen2/2.5/3-VL (merged grid per image and
    per temporal patch of a video); other families fall back to one strip (or guessed square)
    per contiguous run of visual tokens, with `exact=False`.
    """
    adapter = resolve(model)
    inputs = inputs or {}
    model_type = model.config.model_type
    counter = {"image": 0, "video": 0}
    out = []
    for row in input_ids:
        if model_type == "llava":
            out.append(_llava_panels(model, row, inputs.get("pixel_values"), counter))
        elif model_type in QWEN_TYPES:
            out.append(_qwen_panels(model, row, inputs, counter))
        else:
            out.append(_generic_panels(adapter, row))
    return out


# ---- token groups -----------------------------------------------------------------------------
def token_groups(
    input_ids: torch.Tensor,
    visual_ids: Sequence[int],
    attention_mask: torch.Tensor | None = None,
    prompt_len: int | None = None,
) -> torch.Tensor:
    """(B, L) index into `GROUPS` per position; -1 on padding.

    Positions >= `prompt_len` (columns, so left padding is allowed) are generated output.
    """
    b, length = input_ids.shape
    prompt_len = length if prompt_len is None else prompt_len
    valid = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    visual = torch.isin(input_ids, torch.tensor(list(visual_ids), device=input_ids.device))
    col = torch.arange(length, device=input_ids.device)
    in_prompt = col[None, :] < prompt_len
    labels = torch.full_like(input_ids, -1)
    for i in range(b):
        vis = (visual[i] & in_prompt[0] & valid[i]).nonzero().squeeze(1)
        first, last = (int(vis[0]), int(vis[-1])) if vis.numel() else (0, -1)
        row = torch.full((length,), GROUPS.index("instruction"), device=input_ids.device)
        row[col < first] = GROUPS.index("system")
        row[(col > first) & (col < last)] = GROUPS.index("interleaved")
        row[visual[i] & in_prompt[0]] = GROUPS.index("visual")
        row[~in_prompt[0]] = GROUPS.index("output")
        row[~valid[i]] = -1
        labels[i] = row
    return labels


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


# ---- running the model ------------------------------------------------------------------------
def _with_output(model: Any, inputs: dict[str, Any], max_new_tokens: int) -> tuple[dict[str, Any], int]:
    """Greedy-generate `max_new_tokens`, then return inputs covering prompt + output (and prompt width).

    Tokens after an end-of-sequence token are masked out, as padding.
    """
    width = inputs["input_ids"].shape[1]
    if max_new_tokens <= 0:
        return inputs, width
    with torch.inference_mode():
        # A generated image/video token id would be taken for a visual slot in the second pass.
        suppress = list(resolve(model).visual_token_ids)
        seq = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=suppress)
    new = seq[:, width:]
    eos = model.generation_config.eos_token_id
    eos = torch.tensor([eos] if isinstance(eos, int) else (eos or []), device=new.device)
    alive = torch.ones_like(new, dtype=torch.bool)
    if eos.numel():
        ended = torch.isin(new, eos).long().cumsum(1)
        alive = (ended == 0) | ((ended == 1) & torch.isin(new, eos))  # keep the first EOS itself
    out = dict(inputs)
    out["input_ids"] = seq
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones(seq.shape[0], width, dtype=torch.long, device=seq.device)
    out["attention_mask"] = torch.cat([mask, alive.to(mask.dtype)], dim=1)
    for key, value in inputs.items():  # per-token side inputs (mm_token_type_ids, token_type_ids)
        if key not in ("input_ids", "attention_mask") and _per_token(value, inputs["input_ids"]):
            out[key] = torch.cat([value, value.new_zeros(new.shape)], dim=1)
    return out, width


def _per_token(value: Any, ids: torch.Tensor) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.ndim == 2
        and value.shape == ids.shape
        and not (value.is_floating_point())
    )


def _query_rows(labels: torch.Tensor, query: Query) -> list[torch.Tensor]:
    """Per sample, the sequence positions whose attention we average."""
    rows = []
    for row in labels:
        valid = (row >= 0).nonzero().squeeze(1)
        if query == "last":
            rows.append(valid[-1:])
            continue
        chosen = (row == GROUPS.index(query)).nonzero().squeeze(1)
        if chosen.numel() == 0:
            hint = " (set max_new_tokens > 0)" if query == "output" else ""
            raise FastVError(f"query={query!r}: a sample has no {query} tokens{hint}")
        rows.append(chosen)
    return rows


def layer_indices(layers: Iterable[int] | None, n: int) -> list[int]:
    """Validated, de-duplicated layer indices (negative ones count from the end); None = all."""
    if layers is None:
        return list(range(n))
    out = []
    for layer in layers:
        i = layer + n if layer < 0 else layer
        if not 0 <= i < n:
            raise FastVError(f"layer {layer} is out of range: the language model has {n} layers (0..{n - 1})")
        out.append(i)
    return list(dict.fromkeys(out))


def analyze_batch(
    model: Any,
    inputs: dict[str, Any],
    layers: Iterable[int] | None = None,
    query: Query = "last",
    max_new_tokens: int = 0,
    k: int = 2,
    ratio: float = 0.5,
    matrix_layer: int | None = None,
    images: Sequence[Sequence[Any]] | None = None,
    processor: Any = None,
    method: Method | None = None,
) -> list[Analysis]:
    """Analyze every sample of a (left-padded) batch; see `analyze`."""
    if query not in QUERIES:
        raise FastVError(f"query={query!r}: choose one of {', '.join(QUERIES)}")
    adapter = resolve(model)
    n = adapter.num_layers
    layer_list = layer_indices(layers, n)
    matrix_layer = None if matrix_layer is None else layer_indices([matrix_layer], n)[0]
    method = FastV(k=k, ratio=ratio) if method is None else method  # validates its settings now
    inputs = dict(inputs)
    stats = run.prefill(model, inputs, method).stats  # the method's own checks and selection, as it prunes
    full, width = _with_output(model, inputs, max_new_tokens)
    ids, mask = full["input_ids"], full.get("attention_mask")
    labels = token_groups(ids, adapter.visual_token_ids, mask, width)
    rows = _query_rows(labels, query)
    union = torch.unique(torch.cat(rows))
    where = {int(p): j for j, p in enumerate(union.tolist())}
    records = _record(model, adapter, full, set(layer_list), union, matrix_layer)

    kept = stats.kept_positions if stats is not None else [torch.zeros(0, dtype=torch.long)] * ids.shape[0]
    layouts = visual_layout(model, ids[:, :width], inputs)
    pictures = panel_pictures(model, inputs, layouts, images, processor)

    out = []
    for b in range(ids.shape[0]):
        valid = (labels[b] >= 0).nonzero().squeeze(1).cpu()
        local = torch.full((ids.shape[1],), -1, dtype=torch.long)
        local[valid] = torch.arange(valid.numel())
        sel = torch.tensor([where[int(p)] for p in rows[b]])
        lab = labels[b].cpu()
        onehot = torch.stack([(lab == g) for g in range(len(GROUPS))], dim=1).float()  # (L, G)
        share = torch.stack([records[i][b, sel].mean(0) @ onehot for i in layer_list])
        attn = torch.stack([records[i][b, sel].mean(0)[valid] for i in layer_list])
        panels = [Panel(p.kind, p.index, p.frame, p.shape, local[p.positions].tolist(), p.exact) for p in layouts[b]]
        notes = []
        if any(not p.exact for p in panels):
            notes.append(f"visual-token layout of {adapter.family.name} is not known: shown as strips/guesses")
        if not panels:
            notes.append("no visual tokens in this prompt")
        matrix = None
        if matrix_layer is not None:
            matrix = records["matrix"][b][valid][:, valid]
        out.append(
            Analysis(
                family=adapter.family.name,
                layers=layer_list,
                query=query,
                input_ids=ids[b, valid].tolist(),
                labels=lab[valid],
                prompt_len=int((local[:width] >= 0).sum()),
                share=share,
                attention=attn,
                panels=panels,
                k=getattr(method, "k", None),
                ratio=method.ratio,
                kept=local[kept[b].cpu()].tolist(),
                matrix_layer=matrix_layer,
                matrix=matrix,
                images=pictures[b],
                notes=notes,
                method=run.describe(method),
            )
        )
    return out


def analyze(model: Any, inputs: dict[str, Any], **kwargs: Any) -> Analysis:
    """Attention allocation of one prompt (batch of 1) per decoder layer.

    layers: decoder layers to report (default all; negative counts from the end).
    query: whose attention: "last" token (FastV's scorer; the last generated token when
        `max_new_tokens` > 0), or the average over all "instruction" or "output" tokens.
    max_new_tokens: greedy-generate this many tokens first, then attribute attention over
        prompt + output in one forward pass.
    k, ratio: FastV's setting, for the tokens it keeps (scored at layer k-1 by the last prompt token).
    method: any method instead (`fastv.make(...)`); its kept tokens come from one prefill under it,
        so they are exactly what it keeps when it prunes (k and ratio are then not used).
    matrix_layer: also keep that layer's full L x L head-averaged attention matrix.
    images: per sample, the PIL images/frames to draw under heat maps when the pixel tensor
        cannot be shown directly (Qwen-VL); processor: to undo pixel normalisation exactly.
    """
    if inputs["input_ids"].shape[0] != 1:
        raise FastVError("analyze() takes one prompt; use analyze_batch() for a batch")
    return analyze_batch(model, inputs, **kwargs)[0]


def _record(
    model: Any,
    adapter: Adapter,
    inputs: dict[str, Any],
    layers: set[int],
    rows: torch.Tensor,
    matrix_layer: int | None,
) -> dict[Any, torch.Tensor]:
    """One forward pass; taps return, per wanted layer, head-averaged attention of `rows` (B, R, L)."""
    wanted = layers | ({matrix_layer} if matrix_layer is not None else set())
    modules = {}
    for i in sorted(wanted):
        attn = getattr(adapter.layers[i], "self_attn", None)
        if attn is None:
            raise FastVError(f"layer {i} of {adapter.family.name} has no self_attn module to read")
        modules[id(attn)] = (i, attn)
    records: dict[Any, torch.Tensor] = {}

    def tap(module, query, key, mask, kwargs) -> None:
        i = modules[id(module)][0]
        if i in layers:
            records[i] = query_attention(module, query, key, mask, kwargs, rows.to(query.device)).mean(1).cpu()
        if i == matrix_layer:
            records["matrix"] = query_attention(module, query, key, mask, kwargs, slice(None)).mean(1).cpu()

    undo = install(model, adapter.text_config_key, [m for _, m in modules.values()], tap)
    try:
        with torch.inference_mode():
            model(**inputs, use_cache=False, logits_to_keep=1)
    finally:
        undo()
    missing: list[Any] = [i for i in sorted(layers) if i not in records]
    missing += ["matrix"] if matrix_layer is not None and "matrix" not in records else []
    if missing:
        raise FastVError(f"attention was not observed for {missing}: does this model run its layers' self_attn?")
    return records


# ---- pictures under the heat maps -------------------------------------------------------------
def panel_pictures(
    model: Any,
    inputs: dict[str, Any],
    layouts: list[list[Panel]],
    images: Sequence[Sequence[Any]] | None,
    processor: Any,
) -> list[dict[tuple[str, int], list[np.ndarray]]]:
    """Per sample, (kind, index) -> frames as uint8 arrays, aligned with the token grid when possible.

    A 4D pixel tensor (LLaVA) is exactly what the model saw, so it is used first; otherwise the
    caller's images (resized to the grid by the plots) or nothing.
    """
    out: list[dict[tuple[str, int], list[np.ndarray]]] = [{} for _ in layouts]
    pixels = inputs.get("pixel_values")
    if isinstance(pixels, torch.Tensor) and pixels.ndim == 4 and model.config.model_type == "llava":
        mean, std = _norm(processor)
        g = 0
        for b, panels in enumerate(layouts):
            for p in panels:
                if p.kind == "image" and g < pixels.shape[0]:
                    out[b][("image", p.index)] = [np.asarray(unnormalize(pixels[g], mean, std))]
                    g += 1
        return out
    if images is not None:
        for b, sample in enumerate(images):
            kinds = [(p.kind, p.index) for p in layouts[b] if p.frame in (None, 0)]
            for key, item in zip(kinds, sample, strict=False):
                frames = item if isinstance(item, (list, tuple)) else [item]
                out[b][key] = [np.asarray(f.convert("RGB") if hasattr(f, "convert") else f) for f in frames]
    return out


def _norm(processor: Any) -> tuple[Any, Any]:
    ip = getattr(processor, "image_processor", None)
    return getattr(ip, "image_mean", None), getattr(ip, "image_std", None)


def panel_picture(
    pictures: dict[tuple[str, int], list[np.ndarray]], panels: Sequence[Panel], p: Panel
) -> np.ndarray | None:
    """The picture under one panel's token grid (of `panel_pictures`' result for its sample), or None.

    A video's panels (Qwen: one per temporal patch) share its frames evenly."""
    frames = pictures.get((p.kind, p.index))
    if not frames:
        return None
    if p.frame is None:
        return frames[0]
    count = sum(1 for q in panels if q.kind == p.kind and q.index == p.index)
    per = max(1, len(frames) // max(1, count))  # Qwen: 2 frames per temporal patch
    return frames[min(p.frame * per, len(frames) - 1)]


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
