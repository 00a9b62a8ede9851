"""Exact FLOPs of the language model per layer: the arithmetic the engine's `PruneStats.flops` needs.

Pure arithmetic on a text config (no weights, no named checkpoints: those are `fastv.flops.shapes`),
in the convention of `torch.utils.flop_counter.FlopCounterMode` (2 FLOPs per multiply-accumulate,
attention counted dense, element-wise ops ignored). `fastv.flops` builds the tools on it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from transformers import PretrainedConfig

__all__ = [
    "PrefillFlops",
    "TextShape",
    "decode_step_flops",
    "format_flops",
    "kv_cache_bytes",
    "prefill_flops",
    "prefill_report",
]


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


def _fmt(flops: float) -> str:
    """Human-readable FLOPs: 1.23 TFLOPs."""
    for unit, scale in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(flops) >= scale:
            return f"{flops / scale:.2f} {unit}FLOPs"
    return f"{flops:.0f} FLOPs"


format_flops = _fmt


def text_config_of(config: PretrainedConfig) -> PretrainedConfig:
    """The language model's config of a VLM config (or the config itself for a text-only model)."""
    if hasattr(config, "get_text_config"):
        return config.get_text_config(decoder=True)
    return getattr(config, "text_config", config)
