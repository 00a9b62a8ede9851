"""Reshape the attention masks transformers hands to decoder layers, for the shortened sequence.

Masks arrive in three forms: None (SDPA's causal fast path), a 4D boolean (SDPA: True = attend)
or a 4D additive float (eager: 0 or dtype-min), and 2D padding masks on flash-attention paths.
We select rows/columns by original positions, so causal and sliding-window structure and left
padding survive exactly as transformers computed them.
"""

from __future__ import annotations

import torch

from fastv.core.errors import FastVError
from fastv.core.selection import Selection


def allowed(mask: torch.Tensor) -> torch.Tensor:
    """Boolean view (True = may attend) of a 4D bool or additive mask."""
    if mask.dtype == torch.bool:
        return mask
    return mask > torch.finfo(mask.dtype).min / 2


def _like(ok: torch.Tensor, template: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
    if template is None or template.dtype == torch.bool:
        return ok
    return torch.zeros(ok.shape, dtype=template.dtype, device=ok.device).masked_fill(
        ~ok, torch.finfo(template.dtype).min
    )


def causal(batch: int, q_len: int, kv_len: int, device: torch.device) -> torch.Tensor:
    """(B, 1, q, kv) boolean causal mask whose queries are the last q of kv positions."""
    rows = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    ok = torch.arange(kv_len, device=device)[None, :] <= rows
    return ok[None, None].expand(batch, 1, q_len, kv_len)


def gather_square(mask: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """Prefill: keep rows and columns `index` (B, L') of a (B, h, L, L) mask."""
    if mask is None:
        return None
    b, n = index.shape
    if mask.ndim == 2:
        return mask.expand(b, -1).gather(1, index)
    _check4d(mask)
    m = mask.expand(b, -1, -1, -1)
    h, kv = m.shape[1], m.shape[3]
    m = m.gather(2, index[:, None, :, None].expand(b, h, n, kv))
    return m.gather(3, index[:, None, None, :].expand(b, h, n, n))


def select_columns(mask: torch.Tensor | None, cols: torch.Tensor) -> torch.Tensor | None:
    """Decode: keep key columns `cols` (B, W') of a (B, h, q, W) or (B, W) mask."""
    if mask is None:
        return None
    b = cols.shape[0]
    if mask.ndim == 2:
        return mask.expand(b, -1).gather(1, cols)
    _check4d(mask)
    m = mask.expand(b, -1, -1, -1)
    return m.gather(3, cols[:, None, None, :].expand(b, m.shape[1], m.shape[2], cols.shape[1]))


def restrict_columns(
    mask: torch.Tensor | None, col_ok: torch.Tensor, q_len: int, like_dtype: torch.dtype
) -> torch.Tensor:
    """Forbid key columns where `col_ok` (B, kv) is False, except each query's own column.

    Keeping the diagonal means no query row is left with nothing to attend to (no NaNs); rows
    of forbidden tokens never feed a permitted token, because their columns stay forbidden.
    """
    b, kv = col_ok.shape
    if mask is not None and mask.ndim == 2:
        raise FastVError(
            "this setting needs a 4D attention mask, which flash attention does not take: "
            "use attn_implementation='sdpa' or 'eager' (mode='mask', or batches whose samples keep "
            "different numbers of tokens)"
        )
    if mask is None:
        ok = causal(b, q_len, kv, col_ok.device)
    else:
        _check4d(mask)
        ok = allowed(mask).expand(b, -1, -1, -1)
    diag = torch.zeros(q_len, kv, dtype=torch.bool, device=col_ok.device)
    diag[torch.arange(q_len), torch.arange(q_len) + (kv - q_len)] = True
    ok = ok & (col_ok[:, None, None, :] | diag[None, None])
    return _like(ok, mask, like_dtype)


def _check4d(mask: torch.Tensor) -> None:
    if not isinstance(mask, torch.Tensor) or mask.ndim != 4:
        raise FastVError(
            f"unsupported attention mask ({type(mask).__name__}); use attn_implementation='sdpa' or 'eager'"
        )


def dtype_of(mask: torch.Tensor | None) -> torch.dtype:
    """The dtype a restricted mask takes: the incoming one's, or boolean where none came."""
    return torch.bool if mask is None else mask.dtype


def prefill_mask(mask: torch.Tensor | None, sel: Selection) -> torch.Tensor | None:
    """A prefill layer's mask after a cut: the kept rows and columns, minus the selection's invalid keys."""
    out = gather_square(mask, sel.index)
    if sel.valid is not None:
        out = restrict_columns(out, sel.valid, sel.index.shape[1], dtype_of(mask))
    return out


def decode_mask(mask, done: list[Selection], n: int, prompt_len: int, full_total: int, q_len: int):
    """Key columns of a decode-step mask for layers that cache only stage n's kept tokens.

    transformers sizes a mask from one layer's cache (the first layer of that attention type), so
    it may come in the full geometry or in any stage's shortened one; map its columns to stage n's.
    """
    sel = done[n]
    b, kept = sel.index.shape
    new = full_total - prompt_len
    if mask is not None and mask.shape[-1] != kept + new:
        width = mask.shape[-1]
        tail = torch.arange(new, device=sel.index.device).expand(b, -1)
        if width == full_total:
            cols = torch.cat([sel.index, tail + prompt_len], dim=1)
        else:
            src = next((d for d in done[:n] if d.index.shape[1] + new == width), None)
            if src is None:
                raise FastVError(f"attention mask has {width} key columns; expected {full_total} or {kept + new}")
            rel = torch.searchsorted(src.index.contiguous(), sel.index.contiguous())
            cols = torch.cat([rel, tail + src.index.shape[1]], dim=1)
        mask = select_columns(mask, cols)
    if sel.valid is None:
        return mask
    ones = torch.ones(b, new, dtype=torch.bool, device=sel.index.device)
    return restrict_columns(mask, torch.cat([sel.valid, ones], dim=1), q_len, dtype_of(mask))
