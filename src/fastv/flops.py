"""FLOPs of a vision-language model's prefill, with and without FastV.

Two views:

* `theory_*`: the FastV paper's per-layer estimate `4nd^2 + 2n^2d + 2ndm` (multiply-accumulates of a
  square-attention, two-matrix-FFN layer), used to reproduce the paper's "45% fewer FLOPs".
* `prefill_flops` / `estimate`: an exact count for the real architecture (grouped-query attention,
  gated MLPs, the LM head on the last token only, the vision tower and projector apart), in the
  convention of `torch.utils.flop_counter.FlopCounterMode`: 2 FLOPs per multiply-accumulate of every
  matmul/convolution, attention counted dense (`4*B*H*S_q*S_kv*D`), element-wise ops ignored.

Everything here is pure arithmetic on config fields: no weights are needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

from transformers import PretrainedConfig

from fastv.model_shapes import KNOWN_SHAPES, load_config, text_config_of

__all__ = [
    "FlopsReport",
    "PrefillFlops",
    "TextShape",
    "VisionFlops",
    "decode_step_flops",
    "estimate",
    "format_flops",
    "fastv_layer_seq_lens",
    "flop_counter",
    "kept_count",
    "kv_cache_bytes",
    "prefill_flops",
    "prefill_report",
    "solve_budget",
    "theory_layer_flops",
    "theory_reduction",
    "vision_flops",
]


# --------------------------------------------------------------------------- theory (the paper)


def theory_layer_flops(n: float, d: int, m: int) -> float:
    """The paper's per-layer cost with n tokens: 4nd^2 (Q,K,V,O) + 2n^2d (QK^T, AV) + 2ndm (FFN)."""
    return 4 * n * d * d + 2 * n * n * d + 2 * n * d * m


def theory_reduction(d: int, m: int, num_layers: int, k: int, ratio: float, n_visual: int, n_text: int = 0) -> float:
    """Fraction of LLM FLOPs FastV saves by the paper's formula: K layers at n, the rest at the kept count.

    With `n_text=0` this is exactly the paper's image-token-only figure; a prompt adds unpruned tokens.
    """
    n = n_visual + n_text
    n_hat = n_text + (1 - ratio) * n_visual
    full = num_layers * theory_layer_flops(n, d, m)
    pruned = k * theory_layer_flops(n, d, m) + (num_layers - k) * theory_layer_flops(n_hat, d, m)
    return 1 - pruned / full


# --------------------------------------------------------------------------- the language model


@dataclass(frozen=True)
class TextShape:
    """The few numbers of a decoder-only language model that its FLOPs depend on."""

    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    num_layers: int
    mlp_matrices: int = 3  # gated MLP (gate, up, down); 2 for a plain two-layer FFN

    @classmethod
    def from_config(cls, config: PretrainedConfig) -> TextShape:
        """Read a text config (a VLM config is reduced to its text config first)."""
        tc = text_config_of(config)
        heads = tc.num_attention_heads
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // heads
        return cls(
            hidden=tc.hidden_size,
            intermediate=tc.intermediate_size,
            heads=heads,
            kv_heads=getattr(tc, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab=tc.vocab_size,
            num_layers=tc.num_hidden_layers,
        )

    def layer_flops(self, n: int, n_kv: int | None = None, batch: int = 1) -> int:
        """One decoder layer run on n query tokens attending to n_kv keys (n_kv = n in prefill)."""
        n_kv = n if n_kv is None else n_kv
        d, q_dim, kv_dim = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim
        proj = 2 * batch * n * d * (q_dim + 2 * kv_dim) + 2 * batch * n * q_dim * d
        attn = 4 * batch * self.heads * n * n_kv * self.head_dim
        mlp = 2 * self.mlp_matrices * batch * n * d * self.intermediate
        return proj + attn + mlp

    def lm_head_flops(self, tokens: int = 1, batch: int = 1) -> int:
        """`generate` asks for the last position's logits only (`logits_to_keep=1`)."""
        return 2 * batch * tokens * self.hidden * self.vocab


def _shape(config: PretrainedConfig | TextShape) -> TextShape:
    return config if isinstance(config, TextShape) else TextShape.from_config(config)


def prefill_flops(
    text_config: PretrainedConfig | TextShape,
    layer_seq_lens: Sequence[int],
    batch_size: int = 1,
    lm_head_tokens: int = 1,
) -> int:
    """Exact prefill FLOPs of the language model given the sequence length each layer ran with.

    Per-layer lengths (not one n and one K) make this serve any schedule: FastV's [n]*K + [n']*(L-K),
    multi-stage pruning, or the engine's measured `PruneStats.layer_seq_lens`.
    """
    shape = _shape(text_config)
    layers = sum(shape.layer_flops(int(n), batch=batch_size) for n in layer_seq_lens)
    return layers + shape.lm_head_flops(lm_head_tokens, batch_size)


@dataclass(frozen=True)
class PrefillFlops:
    """Latest prefill, full model vs as run (what the engine's handle reports)."""

    full: int
    pruned: int
    layer_seq_lens: tuple[int, ...]
    batch_size: int = 1

    @property
    def reduction(self) -> float:
        return 1 - self.pruned / self.full if self.full else 0.0

    @property
    def speedup(self) -> float:
        return self.full / self.pruned if self.pruned else float("inf")

    def to_dict(self) -> dict[str, float]:
        """Plain numbers, e.g. for `PruneStats.flops`."""
        return {"full": self.full, "pruned": self.pruned, "reduction": self.reduction, "speedup": self.speedup}

    def __str__(self) -> str:
        return (
            f"prefill FLOPs {_fmt(self.pruned)} vs {_fmt(self.full)} full "
            f"(-{self.reduction:.1%}, x{self.speedup:.2f} predicted)"
        )


def prefill_report(
    text_config: PretrainedConfig | TextShape,
    layer_seq_lens: Sequence[int],
    batch_size: int = 1,
    full_len: int | None = None,
) -> PrefillFlops:
    """Full vs pruned prefill FLOPs; the full model runs every layer at `full_len` tokens.

    full_len defaults to the first layer's length, which is the prompt's unless a cut sits at layer 0.
    """
    lens = tuple(int(n) for n in layer_seq_lens)
    full_len = lens[0] if full_len is None and lens else full_len
    full = prefill_flops(text_config, [full_len] * len(lens), batch_size) if lens else 0
    return PrefillFlops(full, prefill_flops(text_config, lens, batch_size), lens, batch_size)


def decode_step_flops(text_config: PretrainedConfig | TextShape, cache_lens: Sequence[int], batch_size: int = 1) -> int:
    """One generated token: every layer runs 1 query against its own cache (+ the new key)."""
    shape = _shape(text_config)
    layers = sum(shape.layer_flops(1, n_kv=int(c) + 1, batch=batch_size) for c in cache_lens)
    return layers + shape.lm_head_flops(1, batch_size)


def kv_cache_bytes(
    text_config: PretrainedConfig | TextShape, layer_lens: Sequence[int], batch_size: int = 1, dtype_bytes: int = 2
) -> int:
    """Keys + values held per layer: FastV's layers >= K cache only the kept tokens."""
    shape = _shape(text_config)
    per_token = 2 * shape.kv_heads * shape.head_dim * dtype_bytes * batch_size
    return per_token * sum(int(n) for n in layer_lens)


def kept_count(n_visual: int, ratio: float) -> int:
    """Visual tokens FastV keeps at pruning ratio R: the same rounding as `FastV.keep_count`."""
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    return n_visual - round(ratio * n_visual)


def fastv_layer_seq_lens(num_layers: int, n_tokens: int, n_visual: int, k: int, kept: int) -> list[int]:
    """Sequence length per layer under FastV: n for layers < K, n - dropped from layer K on."""
    if not 0 <= k <= num_layers:
        raise ValueError(f"K must be in [0, {num_layers}], got {k}")
    short = n_tokens - (n_visual - kept)
    return [n_tokens] * k + [short] * (num_layers - k)


# --------------------------------------------------------------------------- vision tower + projector


@dataclass(frozen=True)
class VisionFlops:
    """Vision side of a prefill; FastV leaves it unchanged."""

    tower: int
    projector: int
    units: int  # images, crops, frames or temporal patch groups through the tower
    visual_tokens: int  # tokens handed to the language model
    note: str = ""


def _vit_layer(n: int, d: int, m: int, mlp_matrices: int = 2) -> int:
    """A ViT block on n tokens: Q,K,V,O projections, dense attention, MLP."""
    return 8 * n * d * d + 4 * n * n * d + 2 * mlp_matrices * n * d * m


def _clip_vision(config: PretrainedConfig, kind: str, n_visual: int | None, frames: int | None) -> VisionFlops:
    vc = config.vision_config
    patches = (vc.image_size // vc.patch_size) ** 2
    n_tower = patches + 1  # + CLS
    layers = config.vision_feature_layer
    n_feature_layers = 1 if isinstance(layers, int) else len(layers)
    keep_cls = config.vision_feature_select_strategy != "default"
    d_text = config.text_config.hidden_size

    def projector(n: int) -> int:
        return 2 * n * vc.hidden_size * n_feature_layers * d_text + 2 * n * d_text * d_text

    note = ""
    if kind == "video_llava" and (frames or (n_visual is None)):
        # Video-LLaVA keeps the CLS token of every frame.
        frames = frames or 8
        units, per_unit_lm, per_unit_proj = frames, n_tower, n_tower
        visual = frames * n_tower
        note = f"video: {frames} frames x {n_tower} tokens"
    elif kind == "llava_next":
        # anyres, a square image at the largest 2x2 grid: base crop + 4 tiles, unpadded grid + newlines.
        side = int(math.isqrt(patches))
        per_image = patches + (2 * side) * (2 * side + 1)
        images = max(1, round(n_visual / per_image)) if n_visual else 1
        units = 5 * images
        per_unit_proj = n_tower if keep_cls else patches
        visual = n_visual or images * per_image
        note = f"anyres: {images} image(s) x 5 crops"
        return VisionFlops(units * _clip_tower(vc, n_tower), units * projector(per_unit_proj), units, visual, note)
    else:
        per_unit_lm = per_unit_proj = n_tower if keep_cls else patches
        units = max(1, math.ceil(n_visual / per_unit_lm)) if n_visual else 1
        visual = n_visual or units * per_unit_lm
    return VisionFlops(units * _clip_tower(vc, n_tower), units * projector(per_unit_proj), units, visual, note)


def _clip_tower(vc: PretrainedConfig, n_tower: int) -> int:
    """All CLIP layers run (the feature layer is picked from the hidden states afterwards)."""
    patches = n_tower - 1
    conv = 2 * patches * vc.hidden_size * vc.num_channels * vc.patch_size**2
    return conv + vc.num_hidden_layers * _vit_layer(n_tower, vc.hidden_size, vc.intermediate_size)


def _merged_grid(tokens: int) -> tuple[int, int]:
    """A near-square (h, w) grid of merged patches with h*w == tokens."""
    h = int(math.isqrt(tokens))
    while tokens % h:
        h -= 1
    return h, tokens // h


def _window_sizes(grid_h: int, grid_w: int, window: int, unit: int) -> list[int]:
    """Patch counts of Qwen2.5-VL's attention windows over one temporal group (merged grid h x w)."""
    rows = [window] * (grid_h // window) + ([grid_h % window] if grid_h % window else [])
    cols = [window] * (grid_w // window) + ([grid_w % window] if grid_w % window else [])
    return [r * c * unit for r in rows for c in cols]


def _qwen_vision(config: PretrainedConfig, kind: str, n_visual: int | None, frames: int | None) -> VisionFlops:
    vc = config.vision_config
    merge = vc.spatial_merge_size
    unit = merge * merge
    groups = max(1, math.ceil(frames / vc.temporal_patch_size)) if frames else 1
    visual = n_visual or groups * 576
    per_group = max(1, visual // groups)
    gh, gw = _merged_grid(per_group)
    visual = groups * gh * gw
    n = visual * unit  # patches through the tower
    if kind == "qwen2_vl":
        d, m, mlp_matrices, out = vc.embed_dim, vc.embed_dim * vc.mlp_ratio, 2, vc.hidden_size
    else:
        d, m, mlp_matrices, out = vc.hidden_size, vc.intermediate_size, 3, vc.out_hidden_size
    conv = 2 * n * d * vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    dense = 8 * n * d * d + 2 * mlp_matrices * n * d * m
    full_attn = 4 * d * groups * (gh * gw * unit) ** 2  # attention stays within a temporal group
    if kind == "qwen2_vl":
        tower = conv + vc.depth * (dense + full_attn)
    else:
        window = vc.window_size // merge // vc.patch_size
        win_attn = 4 * d * groups * sum(s * s for s in _window_sizes(gh, gw, window, unit))
        n_full = len(vc.fullatt_block_indexes)
        tower = conv + vc.depth * dense + n_full * full_attn + (vc.depth - n_full) * win_attn
    ctx = d * unit
    projector = 2 * visual * ctx * ctx + 2 * visual * ctx * out
    note = f"{groups} temporal group(s) of {gh * merge}x{gw * merge} patches"
    return VisionFlops(tower, projector, groups, visual, note)


def vision_flops(
    config: PretrainedConfig, n_visual: int | None = None, frames: int | None = None, batch_size: int = 1
) -> VisionFlops:
    """Vision tower + projector FLOPs for the visual tokens the language model will see.

    `n_visual` is the language model's visual-token count (default: one typical image, or a video
    for video models); `frames` asks for a video. Unknown families report zero with a note.
    """
    kind = getattr(config, "model_type", "")
    if kind in ("llava", "llava_next", "video_llava"):
        v = _clip_vision(config, kind, n_visual, frames)
    elif kind in ("qwen2_vl", "qwen2_5_vl"):
        v = _qwen_vision(config, kind, n_visual, frames)
    else:
        return VisionFlops(0, 0, 0, n_visual or 576, f"vision tower of {kind or 'this model'} not counted")
    if batch_size == 1:
        return v
    return VisionFlops(v.tower * batch_size, v.projector * batch_size, v.units, v.visual_tokens, v.note)


# --------------------------------------------------------------------------- whole-model estimate


@dataclass
class FlopsReport:
    """One (K, R) setting of one model: vision, projector and LLM FLOPs, full vs FastV."""

    model: str
    k: int
    ratio: float
    n_visual: int
    n_text: int
    kept: int
    batch_size: int
    vision_tower: int
    projector: int
    llm_full: int
    llm_fastv: int
    layer_seq_lens: list[int] = field(default_factory=list)
    theory_reduction: float = 0.0
    vision_note: str = ""

    @property
    def total_full(self) -> int:
        return self.vision_tower + self.projector + self.llm_full

    @property
    def total_fastv(self) -> int:
        return self.vision_tower + self.projector + self.llm_fastv

    @property
    def llm_reduction(self) -> float:
        return 1 - self.llm_fastv / self.llm_full

    @property
    def total_reduction(self) -> float:
        return 1 - self.total_fastv / self.total_full

    @property
    def speedup(self) -> float:
        """Prefill speed-up the FLOPs predict (whole model)."""
        return self.total_full / self.total_fastv

    def to_dict(self) -> dict:
        d = asdict(self)
        for name in ("total_full", "total_fastv", "llm_reduction", "total_reduction", "speedup"):
            d[name] = getattr(self, name)
        return d


def estimate(
    model: str | PretrainedConfig,
    k: int = 2,
    ratio: float = 0.5,
    n_visual: int | None = None,
    n_text: int = 40,
    frames: int | None = None,
    batch_size: int = 1,
    kept: int | None = None,
) -> FlopsReport:
    """Prefill FLOPs of a model (known name, config path or config) with and without FastV(K, R)."""
    name = model if isinstance(model, str) else getattr(model, "_name_or_path", "") or model.model_type
    config = load_config(model) if isinstance(model, str) else model
    if frames is None and isinstance(model, str) and model.lower() in KNOWN_SHAPES:
        known = KNOWN_SHAPES[model.lower()]
        frames = known.default_frames if known.default_visual == "video" and n_visual is None else None
    vision = vision_flops(config, n_visual, frames, batch_size)
    n_vis = vision.visual_tokens
    shape = TextShape.from_config(config)
    kept = kept_count(n_vis, ratio) if kept is None else kept
    n = n_vis + n_text
    lens = fastv_layer_seq_lens(shape.num_layers, n, n_vis, k, kept)
    return FlopsReport(
        model=name,
        k=k,
        ratio=1 - kept / n_vis if n_vis else 0.0,
        n_visual=n_vis,
        n_text=n_text,
        kept=kept,
        batch_size=batch_size,
        vision_tower=vision.tower,
        projector=vision.projector,
        llm_full=prefill_flops(shape, [n] * shape.num_layers, batch_size),
        llm_fastv=prefill_flops(shape, lens, batch_size),
        layer_seq_lens=lens,
        theory_reduction=theory_reduction(
            shape.hidden, shape.intermediate, shape.num_layers, k, 1 - kept / n_vis if n_vis else 0.0, n_vis, n_text
        ),
        vision_note=vision.note,
    )


def solve_budget(
    model: str | PretrainedConfig,
    budget: float,
    ks: Iterable[int] = (1, 2, 3, 4, 6, 8, 12, 16),
    scope: str = "total",
    **kwargs,
) -> list[FlopsReport]:
    """For each K, the mildest FastV setting (most tokens kept) whose FLOPs fit `budget`.

    `budget` is absolute FLOPs; `scope` is "total" (vision + projector + LLM) or "llm". K values
    deeper than the model are skipped; a K that cannot meet the budget even at R=1 is left out.
    """
    if scope not in ("total", "llm"):
        raise ValueError("scope must be 'total' or 'llm'")
    base = estimate(model, k=1, ratio=0.0, **kwargs)
    config = load_config(model) if isinstance(model, str) else model
    num_layers = TextShape.from_config(config).num_layers
    out: list[FlopsReport] = []

    def cost(r: FlopsReport) -> int:
        return r.total_fastv if scope == "total" else r.llm_fastv

    for k in ks:
        if not 1 <= k <= num_layers:
            continue
        lo, hi = 0, base.n_visual  # FLOPs grow with the kept count: find the largest that fits
        if cost(estimate(config, k=k, kept=0, **kwargs)) > budget:
            continue
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if cost(estimate(config, k=k, kept=mid, **kwargs)) <= budget:
                lo = mid
            else:
                hi = mid - 1
        rep = estimate(config, k=k, kept=lo, **kwargs)
        rep.model = base.model
        out.append(rep)
    return out


# --------------------------------------------------------------------------- measuring


def _sdpa_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """Dense attention: QK^T and AV, 2 FLOPs per multiply-accumulate each."""
    *batch, heads, s_q, d_qk = query_shape
    s_kv, d_v = key_shape[-2], value_shape[-1]
    b = math.prod(batch)
    return 2 * b * heads * s_q * s_kv * d_qk + 2 * b * heads * s_q * s_kv * d_v


def flop_counter():
    """A `FlopCounterMode` that also counts CPU SDPA, which torch leaves without a formula.

    Without it, attention on CPU (`aten._scaled_dot_product_flash_attention_for_cpu`) counts zero.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ops = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    mapping = {ops: _sdpa_flop} if ops is not None else {}
    return FlopCounterMode(display=False, custom_mapping=mapping)


def _fmt(flops: float) -> str:
    """Human-readable FLOPs: 1.23 TFLOPs."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.2f} {unit}FLOPs"
    return f"{flops:.0f} FLOPs"


format_flops = _fmt
