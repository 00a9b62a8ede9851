"""Observe queries and keys inside the model's own attention, without eager attention.

FastV needs the attention that one query row pays every key at one layer. Asking the model for
`output_attentions` forces eager attention for the whole model and materialises every layer's
L x L matrix. Instead we register, through transformers' public `AttentionInterface`, a thin
implementation named ``fastv_<original>`` that calls the model's original attention unchanged and
then hands the (post-RoPE) query and key tensors to any callback tapped on that attention module.
The callback recomputes only the rows it needs: O(heads x rows x L x d).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

PREFIX = "fastv_"

TapFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None", dict[str, Any]], None]
_TAPS: dict[int, list[TapFn]] = {}


def _delegate(original: str, module: torch.nn.Module) -> Callable[..., Any]:
    if original == "eager":
        # The model's own eager kernel lives beside its attention class (softcapping, sinks, ...).
        return sys.modules[type(module).__module__].eager_attention_forward
    return AttentionInterface._global_mapping[original]


def _make_attention(original: str) -> Callable[..., Any]:
    def attention(module, query, key, value, attention_mask, **kwargs):
        out = _delegate(original, module)(module, query, key, value, attention_mask, **kwargs)
        for fn in _TAPS.get(id(module), ()):
            fn(module, query, key, attention_mask, kwargs)
        return out

    attention.__name__ = f"{PREFIX}{original}"
    return attention


def tapped_name(original: str) -> str:
    """Register (once) and return the name of the tapping implementation wrapping `original`."""
    if original.startswith(PREFIX):
        raise ValueError(f"attention implementation {original!r} is already wrapped by fastv")
    if original != "eager" and original not in AttentionInterface._global_mapping:
        raise ValueError(f"unknown attention implementation {original!r}")
    name = f"{PREFIX}{original}"
    if name not in AttentionInterface._global_mapping:
        AttentionInterface.register(name, _make_attention(original))
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(original)
        if mask_fn is not None:
            # Without a mask function under the new name, transformers silently builds no mask.
            AttentionMaskInterface.register(name, mask_fn)
    return name


def add_tap(module: torch.nn.Module, fn: TapFn) -> Callable[[], None]:
    """Call `fn(module, query, key, mask, kwargs)` after each attention call of `module`; returns undo."""
    _TAPS.setdefault(id(module), []).append(fn)

    def remove() -> None:
        fns = _TAPS.get(id(module), [])
        if fn in fns:
            fns.remove(fn)
        if not fns:
            _TAPS.pop(id(module), None)

    return remove


def install(model: torch.nn.Module, text_config_key: str, modules: list[torch.nn.Module], fn: TapFn):
    """Switch the language model to the tapping implementation and tap `modules`; returns undo.

    Only the text config changes, so the vision tower keeps its own attention implementation.
    """
    original = getattr(model.config, text_config_key)._attn_implementation or "sdpa"
    model.set_attn_implementation({text_config_key: tapped_name(original)})
    removers = [add_tap(m, fn) for m in modules]

    def undo() -> None:
        for remove in removers:
            remove()
        model.set_attn_implementation({text_config_key: original})

    return undo


def query_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    attention_mask: torch.Tensor | None,
    kwargs: dict[str, Any],
    rows: torch.Tensor | slice | int = -1,
) -> torch.Tensor:
    """Softmax attention probabilities of the chosen query rows over all keys, in float32.

    Returns (batch, heads, n_rows, kv_len). Applies the same scaling, soft-capping and mask the
    model's kernel used, so the result equals eager `output_attentions` for those rows.
    """
    q_len, kv_len = query.shape[-2], key.shape[-2]
    row_idx = torch.arange(q_len, device=query.device)[rows].reshape(-1)
    q = query[:, :, row_idx].float()
    k = key.float()
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k = k.repeat_interleave(groups, dim=1)
    scaling = kwargs.get("scaling") or getattr(module, "scaling", q.shape[-1] ** -0.5)
    logits = q @ k.transpose(-1, -2) * scaling
    softcap = kwargs.get("softcap")
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    causal = kwargs.get("is_causal", getattr(module, "is_causal", True))
    allowed = _allowed(attention_mask, row_idx, q_len, kv_len, query.shape[0], query.device, bool(causal))
    logits = logits.masked_fill(~allowed, float("-inf"))
    return torch.softmax(logits, dim=-1).nan_to_num(0.0)


def _allowed(
    mask: torch.Tensor | None,
    row_idx: torch.Tensor,
    q_len: int,
    kv_len: int,
    batch: int,
    device: torch.device,
    causal: bool = True,
) -> torch.Tensor:
    """Boolean (B, 1|H, rows, kv) of the keys each chosen row may see (no mask: causal or all)."""
    if mask is None or mask.ndim == 2:
        offset = kv_len - q_len
        ok = torch.arange(kv_len, device=device)[None, :] <= (row_idx[:, None] + offset)
        if not causal:
            ok = torch.ones_like(ok)
        allowed = ok[None, None].expand(batch, 1, -1, -1)
        if mask is not None:  # 2D padding mask (flash attention path)
            allowed = allowed & mask[:, None, None, -kv_len:].bool()
        return allowed
    m = mask[:, :, row_idx, :kv_len]
    if m.dtype == torch.bool:
        return m
    return m > torch.finfo(m.dtype).min / 2
