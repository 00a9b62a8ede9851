"""FastV on an unmodified transformers model: the settings (`FastV`) and the live hooks (`PruneHandle`).

Mechanism (see shared DESIGN notes): a forward pre-hook on the whole model reads `input_ids` to
find visual tokens and resets per-call state; a tap on layer K-1's attention computes the last
prompt token's attention (prefill only); forward pre-hooks on layers >= K gather the kept rows
of the hidden states, position embeddings, position ids and masks. Layers < K keep the full
KV cache, so transformers' own position bookkeeping (cache length, M-RoPE deltas) stays right.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers.cache_utils import DynamicLayer

from fastv import attention_tap, masks
from fastv.attention_tap import query_attention
from fastv.errors import FastVError
from fastv.families import Adapter, resolve
from fastv.selection import Selection, select
from fastv.stats import PruneStats

Mode = Literal["drop", "mask"]
Scorer = Literal["last_token", "random"]


@dataclass
class FastV:
    """FastV settings. `ratio` R drops that share of each sample's visual tokens; `keep` fixes the count.

    k: layer at which pruning starts (layers 0..k-1 see every token; scores come from layer k-1).
    mode: "drop" removes pruned tokens (the speed-up); "mask" keeps them but hides them from
        attention in layers >= k (the paper's ablation mode; our reference in tests).
    scorer: "last_token" (the paper) or "random" (seeded baseline; allows k=0).
    require_visual: raise instead of warning when a prompt holds no visual tokens.
    """

    k: int = 2
    ratio: float | None = None
    keep: int | None = None
    mode: Mode = "drop"
    scorer: Scorer = "last_token"
    seed: int = 0
    require_visual: bool = False

    def __post_init__(self) -> None:
        if self.ratio is not None and self.keep is not None:
            raise FastVError("give either ratio or keep, not both")
        if self.ratio is None and self.keep is None:
            self.ratio = 0.5
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise FastVError(f"ratio={self.ratio} is outside [0, 1): it is the share of visual tokens dropped")
        if self.keep is not None and self.keep < 0:
            raise FastVError(f"keep={self.keep} must be >= 0 visual tokens")
        if self.k < 0:
            raise FastVError(f"k={self.k} must be >= 0")
        if self.mode not in ("drop", "mask"):
            raise FastVError(f"mode={self.mode!r}: choose 'drop' or 'mask'")
        if self.scorer not in ("last_token", "random"):
            raise FastVError(f"scorer={self.scorer!r}: choose 'last_token' or 'random'")
        if self.k == 0 and self.scorer == "last_token":
            raise FastVError("k=0 leaves no layer to score attention at: use k >= 1, or scorer='random'")

    def keep_count(self, n_visual: int) -> int:
        """Visual tokens a sample with `n_visual` of them keeps."""
        if n_visual == 0:
            return 0
        if self.keep is not None:
            return self.keep
        return n_visual - round(self.ratio * n_visual)

    def apply(self, model: torch.nn.Module) -> PruneHandle:
        """Install FastV on `model`; the returned handle is a context manager and has `remove()`."""
        return PruneHandle(self, model)


@dataclass
class _Call:
    """State of one top-level forward call."""

    prefill: bool
    active: bool
    prompt_len: int
    past_len: int  # cache entries before this call, counted as if nothing had been pruned
    visual: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class PruneHandle:
    """FastV installed on one model. Read `stats` after a prefill; `remove()` restores the model."""

    def __init__(self, pruner: FastV, model: torch.nn.Module) -> None:
        adapter = resolve(model)
        self.pruner = pruner
        self.adapter: Adapter = adapter
        self.model = model
        self.stats: PruneStats | None = None
        self._check_k(adapter)
        if getattr(model, "_fastv_handle", None) is not None:
            raise FastVError("FastV is already applied to this model: call remove() on the first handle first")
        impl = adapter.text_config._attn_implementation or "sdpa"
        if impl.startswith("paged") or "flex" in impl:
            raise FastVError(f"attention implementation {impl!r} is not supported: use 'sdpa', 'eager' or flash")
        self._impl = impl
        self._call: _Call | None = None
        self._selection: Selection | None = None
        self._memo: dict[int, tuple[Any, Any]] = {}
        self._live = False
        self._warned = False
        self._undo: list[Any] = []
        try:
            self._install()
        except Exception:
            self.remove()
            raise
        model._fastv_handle = self

    # ---- installation -------------------------------------------------------------------------
    def _check_k(self, adapter: Adapter) -> None:
        k, n = self.pruner.k, adapter.num_layers
        if k >= n:
            raise FastVError(
                f"k={k} is out of range: the {adapter.family.name} language model has {n} layers; choose k < {n}"
            )
        if k < adapter.min_k:
            raise FastVError(
                f"k={k} is too small for {adapter.family.name}: its first {adapter.min_k} layers receive "
                f"deepstack visual features on the full sequence; choose k >= {adapter.min_k}"
            )

    def _install(self) -> None:
        a, k = self.adapter, self.pruner.k
        if self.pruner.scorer == "last_token":
            attn = getattr(a.layers[k - 1], "self_attn", None)
            if attn is None:
                raise FastVError(f"layer {k - 1} of {a.family.name} has no self_attn module to score")
            self._undo.append(attention_tap.install(self.model, a.text_config_key, [attn], self._on_attention))
        self._undo.append(self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True).remove)
        self._undo.append(self.model.register_forward_hook(self._on_forward_end, always_call=True).remove)
        for i in range(k, a.num_layers):
            hook = a.layers[i].register_forward_pre_hook(self._layer_hook(i), with_kwargs=True)
            self._undo.append(hook.remove)

    def remove(self) -> None:
        """Remove every hook and restore the attention implementation: the model is as before."""
        while self._undo:
            undo = self._undo.pop()
            undo()
        if getattr(self.model, "_fastv_handle", None) is self:
            del self.model._fastv_handle
        self._call = None
        self._selection = None

    def __enter__(self) -> PruneHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ---- per call -----------------------------------------------------------------------------
    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self._memo.clear()
        past = kwargs.get("past_key_values")
        self._check_cache(past)
        past_len = past.get_seq_length() if past is not None else 0
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if past_len == 0:
            self._start_prefill(input_ids, kwargs.get("attention_mask"))
        elif self._call is None:
            pass  # a cache this handle did not prefill: nothing was pruned, nothing to do
        else:
            q_len = input_ids.shape[1] if input_ids is not None else kwargs["inputs_embeds"].shape[1]
            if self.pruner.k == 0 and self.pruner.mode == "drop" and self._selection is not None:
                # Layer 0 is pruned too, so the cache's length is the pruned one: count from the prompt.
                if kwargs.get("position_ids") is None:
                    raise FastVError("with k=0, decode steps need explicit position_ids (generate passes them)")
                past_len += self._call.prompt_len - self._selection.index.shape[1]
            self._check_window(past_len + q_len)
            self._call = _Call(False, self._call.active, self._call.prompt_len, past_len, None, None)
        self._live = True

    def _on_forward_end(self, *args: Any) -> None:
        self._live = False
        self._memo.clear()

    def _start_prefill(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        if input_ids is None:
            raise FastVError("FastV finds visual tokens from input_ids: call the model with input_ids")
        if attention_mask is not None and attention_mask.ndim == 2 and not bool(attention_mask[:, -1].all()):
            raise FastVError(
                "right padding: FastV scores with the last prompt token, which must be the last column; "
                "set processor.tokenizer.padding_side = 'left'"
            )
        ids = torch.tensor(self.adapter.visual_token_ids, device=input_ids.device)
        visual = torch.isin(input_ids, ids)
        visual[:, -1] = False  # the token whose logits generation reads is never dropped
        batch, length = input_ids.shape
        self._selection = None
        self.stats = None
        active = bool(visual.any())
        if not active:
            msg = "no visual tokens in the prompt (none of the model's image/video token ids): running unpruned"
            if self.pruner.require_visual:
                raise FastVError(msg)
            if not self._warned:
                warnings.warn(msg, stacklevel=3)
                self._warned = True
            n = self.adapter.num_layers
            self.stats = PruneStats([visual[0, :0].long()] * batch, [0] * batch, [0] * batch, [length] * n, length)
        else:
            self._check_window(length)
        scores = None
        if active and self.pruner.scorer == "random":
            gen = torch.Generator().manual_seed(self.pruner.seed)
            scores = torch.rand(batch, length, generator=gen).to(input_ids.device)
        self._call = _Call(True, active, length, 0, visual, scores)

    def _check_cache(self, past: Any) -> None:
        if past is None:
            return
        for layer in getattr(past, "layers", ()):
            if not isinstance(layer, DynamicLayer):
                raise FastVError(
                    f"{type(past).__name__} ({type(layer).__name__}) has fixed-size layers that FastV cannot "
                    "shorten: use the default DynamicCache (no cache_implementation='static', no torch.compile "
                    "with static shapes)"
                )

    def _check_window(self, total_len: int) -> None:
        cfg, k = self.adapter.text_config, self.pruner.k
        window = getattr(cfg, "sliding_window", None)
        if window is None or getattr(cfg, "use_sliding_window", True) is False:
            return
        types = getattr(cfg, "layer_types", None)
        if types is not None and "sliding_attention" not in types[k:]:
            return
        if total_len > window:
            raise FastVError(
                f"sequence of {total_len} tokens exceeds the sliding window ({window}) of layers >= k: "
                "pruned and unpruned layers would evict different tokens. Shorten the prompt/generation "
                "or use a model without a shorter sliding window"
            )

    # ---- scoring ------------------------------------------------------------------------------
    def _on_attention(self, module, query, key, mask, kwargs) -> None:
        call = self._call
        if not self._live or call is None or not call.prefill or not call.active:
            return
        probs = query_attention(module, query, key, mask, kwargs, rows=-1)  # (B, H, 1, L)
        call.scores = probs.mean(dim=1)[:, 0]

    # ---- layers >= K --------------------------------------------------------------------------
    def _layer_hook(self, i: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict):
            call = self._call
            if not self._live or call is None or not call.active:
                return None
            if call.prefill:
                if i == self.pruner.k:
                    self._select(call)
                return self._prefill_inputs(i, args, kwargs)
            return self._decode_inputs(i, args, kwargs)

        return hook

    def _select(self, call: _Call) -> None:
        if call.scores is None:
            raise FastVError(f"no attention scores were recorded at layer {self.pruner.k - 1}")
        sel = select(call.scores, call.visual, self.pruner.keep_count)
        self._selection = sel
        k, n = self.pruner.k, self.adapter.num_layers
        pruned_len = sel.index.shape[1] if self.pruner.mode == "drop" else call.prompt_len
        self.stats = PruneStats(
            kept_positions=sel.kept_visual,
            num_visual=sel.num_visual,
            num_kept=sel.num_kept,
            layer_seq_lens=[call.prompt_len] * k + [pruned_len] * (n - k),
            prompt_len=call.prompt_len,
            kept_sequence_index=sel.index,
            scores=call.scores,
        )

    def _memoized(self, obj: Any, fn) -> Any:
        """fn(obj), computed once per forward: every layer receives the same mask/position objects."""
        key = id(obj)
        hit = self._memo.get(key)
        if hit is None or hit[0] is not obj:
            hit = (obj, fn(obj))
            self._memo[key] = hit
        return hit[1]

    def _prefill_inputs(self, i: int, args: tuple, kwargs: dict):
        sel, call = self._selection, self._call
        if self.pruner.mode == "mask":
            kwargs["attention_mask"] = self._memoized(
                kwargs.get("attention_mask"),
                lambda m: masks.restrict_columns(m, sel.keep_mask, call.prompt_len, _dtype(m)),
            )
            return args, kwargs
        index = sel.index
        if i == self.pruner.k:
            if args:
                args = (_take(args[0], index, 1), *args[1:])
            else:
                kwargs["hidden_states"] = _take(kwargs["hidden_states"], index, 1)
        pe = kwargs.get("position_embeddings")
        if pe is not None:
            kwargs["position_embeddings"] = self._memoized(pe, lambda p: tuple(_take(t, index, -2) for t in p))
        if kwargs.get("position_ids") is not None:
            kwargs["position_ids"] = self._memoized(kwargs["position_ids"], lambda p: _take(p, index, -1))
        kwargs["attention_mask"] = self._memoized(kwargs.get("attention_mask"), self._gather_prefill_mask)
        return args, kwargs

    def _gather_prefill_mask(self, mask: torch.Tensor | None) -> torch.Tensor | None:
        sel = self._selection
        out = masks.gather_square(mask, sel.index)
        if sel.valid is not None:
            out = masks.restrict_columns(out, sel.valid, sel.index.shape[1], _dtype(mask))
        return out

    def _decode_inputs(self, i: int, args: tuple, kwargs: dict):
        sel, call = self._selection, self._call
        hs = args[0] if args else kwargs["hidden_states"]
        q_len = hs.shape[1]
        full_total = call.past_len + q_len
        new = full_total - call.prompt_len
        if self.pruner.mode == "mask":
            ones = torch.ones(sel.keep_mask.shape[0], new, dtype=torch.bool, device=hs.device)
            col_ok = torch.cat([sel.keep_mask, ones], dim=1)
            kwargs["attention_mask"] = self._memoized(
                kwargs.get("attention_mask"), lambda m: masks.restrict_columns(m, col_ok, q_len, _dtype(m))
            )
            return args, kwargs
        kept = sel.index.shape[1]
        if i == self.pruner.k:
            past = kwargs.get("past_key_values")
            have = past.layers[i].get_seq_length() if past is not None else None
            if have is not None and have != kept + new - q_len:
                raise FastVError(
                    f"layer {i} caches {have} tokens but this handle's prefill kept {kept}: the cache was not "
                    "filled by this FastV prefill; start generation from the prompt again"
                )
        kwargs["attention_mask"] = self._memoized(
            kwargs.get("attention_mask"), lambda m: self._decode_mask(m, full_total, kept + new, q_len)
        )
        return args, kwargs

    def _decode_mask(self, mask, full_total: int, pruned_total: int, q_len: int):
        sel, call = self._selection, self._call
        b = sel.index.shape[0]
        width = None if mask is None else mask.shape[-1]
        if width == full_total and full_total != pruned_total:
            tail = torch.arange(call.prompt_len, full_total, device=sel.index.device).expand(b, -1)
            mask = masks.select_columns(mask, torch.cat([sel.index, tail], dim=1))
        elif width is not None and width != pruned_total:
            raise FastVError(f"attention mask has {width} key columns; expected {full_total} or {pruned_total}")
        if sel.valid is None:
            return mask
        ones = torch.ones(b, pruned_total - sel.index.shape[1], dtype=torch.bool, device=sel.index.device)
        return masks.restrict_columns(mask, torch.cat([sel.valid, ones], dim=1), q_len, _dtype(mask))


def _dtype(mask: torch.Tensor | None) -> torch.dtype:
    return torch.bool if mask is None else mask.dtype


def _take(t: torch.Tensor, index: torch.Tensor, seq_dim: int) -> torch.Tensor:
    """Gather positions `index` (B, L') along `seq_dim`; the batch dim sits just before it (may be 1)."""
    seq_dim %= t.ndim
    bdim = seq_dim - 1
    b, n = index.shape
    shape = list(t.shape)
    shape[bdim] = b
    t = t.expand(shape)
    view = [1] * t.ndim
    view[bdim], view[seq_dim] = b, n
    shape[seq_dim] = n
    return t.gather(seq_dim, index.view(view).expand(shape))
