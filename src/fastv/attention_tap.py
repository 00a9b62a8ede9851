"""Observe queries and keys inside the model's own attention, without eager attention.

FastV needs the attention that one query row pays every key at one layer. Asking the model for
`output_attentions` forces eager attention for the whole model and materialises every layer's
L x L matrix. Instead we register, through transformers' public `AttentionInterface`, a thin
implementation named ``fastv_<original>`` that calls the model's original attention unchanged and
then hands the (post-RoPE) query and key tensors to any callback tapped on that attention module.
The callback recomputes only the rows it needs: O(heads x rows x L x d).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from fastv import compat
from fastv.errors import FastVError

PREFIX = "fastv_"
_TAPS_ATTR = "_fastv_attention_taps"  # on the tapped module itself: no global state to leak a model

TapFn = Callable[[torch.nn.Module, torch.Tensor, torch.Tensor, "torch.Tensor | None", dict[str, Any]], None]


def _make_attention(original: str) -> Callable[..., Any]:
    def attention(module, query, key, value, attention_mask, **kwargs):
        out = compat.attention_function(original, module)(module, query, key, value, attention_mask, **kwargs)
        for fn in getattr(module, _TAPS_ATTR, ()):
            fn(module, query, key, attention_mask, kwargs)
        return out

    attention.__name__ = f"{PREFIX}{original}"
    return attention


def tapped_name(original: str) -> str:
    """Register (once) and return the name of the tapping implementation wrapping `original`."""
    if original.startswith(PREFIX):
        raise FastVError(f"attention implementation {original!r} is already wrapped by fastv")
    if not compat.is_registered_attention(original):
        raise FastVError(f"unknown attention implementation {original!r}")
    name = f"{PREFIX}{original}"
    if not compat.is_registered_attention(name):
        compat.register_attention(name, _make_attention(original), masks_like=original)
    return name


def add_tap(module: torch.nn.Module, fn: TapFn) -> Callable[[], None]:
    """Call `fn(module, query, key, mask, kwargs)` after each attention call of `module`; returns undo.

    The taps live on the module, so a handle that is never removed dies with its model.
    """
    taps = module.__dict__.setdefault(_TAPS_ATTR, [])
    taps.append(fn)

    def remove() -> None:
        if fn in taps:
            taps.remove(fn)
        if not taps and module.__dict__.get(_TAPS_ATTR) is taps:
            del module.__dict__[_TAPS_ATTR]

    return remove


def install(model: torch.nn.Module, config_key: str, modules: list[torch.nn.Module], fn: TapFn):
    """Switch one sub-model (text or vision) to the tapping implementation and tap `modules`; returns undo.

    Only that sub-config changes, so e.g. the vision tower keeps its own attention implementation.
    When the sub-model already runs a tapping implementation (the engine's tap, or another method's),
    only the callbacks are added.
    """
    current = compat.attention_implementation(getattr(model.config, config_key))
    removers = [add_tap(m, fn) for m in modules]
    switched = not current.startswith(PREFIX)
    if switched:
        compat.set_attention(model, config_key, tapped_name(current))

    def undo() -> None:
        for remove in removers:
            remove()
        if switched:
            compat.set_attention(model, config_key, current)

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
