"""The hooks that run a token-reduction method on an unmodified transformers model.

Mechanism (see the shared DESIGN notes): a forward pre-hook on the whole model reads `input_ids`
to find visual tokens and resets per-call state; taps on the attention of the layer before each
cut record the attention rows a method ranks by (prefill only); forward pre-hooks on the layers
from the first cut on gather the kept rows of the hidden states, position embeddings, position
ids and masks. Layers before the first cut keep the full KV cache, so transformers' own position
bookkeeping (cache length, M-RoPE deltas) stays right. A method only describes `Stage`s.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from fastv.core import checks, layer_scoring, masks, positions
from fastv.core.call import Call, visual_mask
from fastv.core.errors import FastVError
from fastv.core.hf import attention_tap, compat
from fastv.core.hf.attention_tap import query_attention
from fastv.core.hf.families import Adapter, resolve
from fastv.core.selection import Selection, select
from fastv.core.stages import Stage, StageContext, StagePlan
from fastv.core.stats import PruneStats

__all__ = ["PruneHandle"]


class PruneHandle:
    """A method installed on one model. Read `stats` after a prefill; `remove()` restores the model."""

    def __init__(self, method: StagePlan, model: torch.nn.Module) -> None:
        adapter = resolve(model)
        self.method = method
        self.adapter: Adapter = adapter
        self.model = model
        self.stats: PruneStats | None = None
        self.stages: list[Stage] = sorted(method.build(adapter), key=lambda s: s.layer)
        checks.check_stages(self.stages, adapter, method)
        if getattr(model, "_fastv_handle", None) is not None:
            raise FastVError("a method is already applied to this model: call remove() on the first handle first")
        checks.check_attention(adapter)
        self.extra: dict[str, Any] = {}  # filled by a method's own observers (prepare)
        self._call: Call | None = None
        self._done: list[Selection] = []  # selections of this prefill's stages so far
        self._memo: dict[Any, tuple[Any, Any]] = {}
        self._live = False
        self._warned = False
        self._scoring: int | None = None  # the stage whose own-layer attention is being computed
        contiguous = [s.positions == "contiguous" for s in self.stages]
        self._renumbering = positions.Renumbering(contiguous) if any(contiguous) else None
        self._undo: list[Any] = []
        try:
            self._install()
        except Exception:
            self.remove()
            raise
        model._fastv_handle = self

    # ---- installation -------------------------------------------------------------------------
    def _install(self) -> None:
        a = self.adapter
        tapped = [(i, s) for i, s in enumerate(self.stages) if s.attention_rows]
        if tapped:
            modules = []
            for _, stage in tapped:
                if stage.scored_at == "own":
                    modules.append(layer_scoring.attention_module(a.layers[stage.layer], stage.layer))
                    continue
                attn = getattr(a.layers[stage.layer - 1], "self_attn", None)
                if attn is None:
                    raise FastVError(f"layer {stage.layer - 1} of {a.family.name} has no self_attn module to score")
                modules.append(attn)
            by_module = {id(m): i for m, (i, _) in zip(modules, tapped, strict=True)}
            self._undo.append(
                attention_tap.install(
                    self.model,
                    a.text_config_key,
                    modules,
                    lambda mod, *x: self._on_attention(by_module[id(mod)], mod, *x),
                )
            )
        self._undo.extend(self.method.prepare(self))
        self._undo.append(self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True).remove)
        self._undo.append(self.model.register_forward_hook(self._on_forward_end, always_call=True).remove)
        for i in range(self.stages[0].layer, a.num_layers):
            hook = a.layers[i].register_forward_pre_hook(self._layer_hook(i), with_kwargs=True)
            self._undo.append(hook.remove)

    def remove(self) -> None:
        """Remove every hook and restore the attention implementation: the model is as before."""
        while self._undo:
            self._undo.pop()()
        if getattr(self.model, "_fastv_handle", None) is self:
            del self.model._fastv_handle
        self._call = None
        self._done = []

    def __enter__(self) -> PruneHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    # ---- per call -----------------------------------------------------------------------------
    def _on_forward(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        """Classify the call from facts (the cache object and its length, this handle's record)."""
        self._memo.clear()
        cache = compat.find_cache(kwargs, args)
        checks.check_cache(cache)
        past_len = compat.cache_length(cache)
        input_ids = compat.input_ids(args, kwargs)
        q_len = compat.query_length(args, kwargs)
        if cache is None and compat.continues_a_sequence(kwargs, q_len):
            raise compat.incompatible(
                f"a forward call of {q_len} new tokens continues an earlier sequence (its attention mask or "
                "position ids reach past it) but carries no KV cache object fastv can find (the cache argument "
                "may have been renamed or wrapped)"
            )
        if past_len == 0:
            self._start_prefill(input_ids, kwargs.get(compat.ATTENTION_MASK))
        elif self._call is not None:
            # A decode step may sample an image token id itself; a multi-token chunk with one is a new image.
            if (
                q_len > 1
                and input_ids is not None
                and bool(visual_mask(input_ids, self.adapter.visual_token_ids).any())
            ):
                raise FastVError(
                    f"this call adds visual tokens to a cache that already holds {past_len} tokens (a second "
                    "image in a multi-turn chat, or chunked prefill): fastv prunes a prompt's visual tokens at "
                    "its prefill; start a new cache for each prompt with images"
                )
            first = self._done[0] if self._done and self.method.mode == "drop" else None
            if first is not None and self.stages[0].layer == 0:
                # Layer 0 is pruned too, so the cache's length is the pruned one: count from the prompt.
                if kwargs.get(compat.POSITION_IDS) is None:
                    raise FastVError(
                        "with a cut at layer 0, decode steps need explicit position_ids (generate passes them)"
                    )
                past_len += self._call.prompt_len - first.index.shape[1]
            checks.check_window(self.adapter, self.stages[0].layer, past_len + q_len)
            self._call = Call(False, self._call.active, self._call.prompt_len, past_len)
        self._live = True

    def _on_forward_end(self, *args: Any) -> None:
        self._live = False
        self._memo.clear()

    def _start_prefill(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        self._call = call = Call.prefill_of(input_ids, attention_mask, self.adapter.visual_token_ids)
        self._done = []
        self.stats = None
        if call.active:
            checks.check_window(self.adapter, self.stages[0].layer, call.prompt_len)
            return
        msg = "no visual tokens in the prompt (none of the model's image/video token ids): running unpruned"
        if self.method.require_visual:
            raise FastVError(msg)
        if not self._warned:
            warnings.warn(msg, stacklevel=3)
            self._warned = True
        batch, length = call.visual.shape
        empty = call.visual[0, :0].long()
        self.stats = PruneStats([empty] * batch, [0] * batch, [0] * batch, [length] * self.adapter.num_layers, length)

    # ---- scoring ------------------------------------------------------------------------------
    def _rows(self) -> torch.Tensor:
        """Original positions of the rows computed at the current point of the prefill."""
        if self._done and self.method.mode == "drop":
            return self._done[-1].index
        visual = self._call.visual
        return torch.arange(visual.shape[1], device=visual.device).expand(visual.shape[0], -1)

    def _on_attention(self, stage_no: int, module, query, key, mask, kwargs) -> None:
        call = self._call
        if not self._live or call is None or not call.prefill or not call.active:
            return
        if self.stages[stage_no].scored_at == "own" and self._scoring != stage_no:
            return  # the layer's real forward after its cut, not the scoring call
        rows = self._rows()
        if self.stages[stage_no].attention_rows == "last":
            wanted = rows[:, -1:]
            probs = query_attention(module, query, key, mask, kwargs, rows=-1)
        else:
            is_text = call.text_after.gather(1, rows)
            start = int(is_text.float().argmax(dim=1).min())  # text-after-image is a suffix of each row
            wanted = rows[:, start:]
            probs = query_attention(module, query, key, mask, kwargs, rows=slice(start, None))
        valid = call.text_after.gather(1, wanted) | (wanted == call.prompt_len - 1)
        if self._done and self._done[-1].valid is not None and self.method.mode == "drop":
            valid &= self._done[-1].valid[:, -wanted.shape[1] :]
        call.attention[stage_no] = (probs.mean(dim=1), wanted, valid)

    # ---- layers from the first cut on ---------------------------------------------------------
    def _layer_hook(self, i: int):
        stage_at = {s.layer: n for n, s in enumerate(self.stages)}

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict):
            call = self._call
            if not self._live or call is None or not call.active:
                return None
            if call.prefill and i in stage_at:
                args, kwargs = self._cut(stage_at[i], args, kwargs)
            current = max(n for n, s in enumerate(self.stages) if s.layer <= i)
            pe, ids = kwargs.get(compat.POSITION_EMBEDDINGS), kwargs.get(compat.POSITION_IDS)
            if call.prefill:
                args, kwargs = self._prefill_inputs(current, args, kwargs)
            else:
                args, kwargs = self._decode_inputs(i, current, args, kwargs)
            return args, self._renumbered(i, current, kwargs, pe, ids)

        return hook

    def _cut(self, n: int, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Run stage n's selection on the hidden states entering its layer; in drop mode, shorten them."""
        call, stage, drop = self._call, self.stages[n], self.method.mode == "drop"
        hidden = compat.hidden_states(args, kwargs)
        rows = self._rows()
        prev = self._done[-1] if self._done else None
        alive = call.visual if prev is None else call.visual & prev.keep_mask
        if n == 0:
            if self._renumbering is not None:
                self._renumbering.reset()
        if stage.attention_rows and stage.scored_at == "own":
            self._score_own_layer(n, args, kwargs)
        attention = call.attention.pop(n, (None, None, None))
        if stage.attention_rows and attention[0] is None:
            at = stage.layer - (stage.scored_at == "previous")
            raise FastVError(f"no attention was recorded at layer {at} for {self.method.name}")
        gen = torch.Generator().manual_seed(self.method.seed + n)
        ctx = StageContext(
            call.input_ids, call.visual, alive, hidden, rows, gen, self.adapter, *attention, extra=self.extra
        )
        scores = stage.score(ctx)
        keep = stage.keep
        if isinstance(scores, tuple):
            scores, keep = scores
        elif keep is None:
            raise FastVError(f"{self.method.name}: a stage without `keep` must return (scores, kept per sample)")
        sel = select(scores, alive, keep, None if prev is None else prev.keep_mask, rows if drop else None)
        self._done.append(sel)
        if self._renumbering is not None:
            self._renumbering.add(sel, drop)
        if drop:
            if stage.merge is not None:
                new_hidden = stage.merge(ctx, sel)
            else:
                rel = torch.searchsorted(rows.contiguous(), sel.index.contiguous())
                new_hidden = positions.take_columns(hidden, rel, 1)
            args, kwargs = compat.replace_hidden_states(args, kwargs, new_hidden)
        if n == len(self.stages) - 1:
            self._record_stats(scores)
        return args, kwargs

    def _score_own_layer(self, n: int, args: tuple, kwargs: dict) -> None:
        """Run stage n's layer's own attention on its pre-cut input (see fastv.core.layer_scoring).

        The layer receives its kwargs in the full prompt's geometry; the rows entering it are those
        of stage n-1, so the scoring call gets stage n-1's position embeddings and mask.
        """
        hidden = compat.hidden_states(args, kwargs)
        layer = self.stages[n].layer
        inputs = dict(kwargs)
        if n:
            pe, ids = inputs.get(compat.POSITION_EMBEDDINGS), inputs.get(compat.POSITION_IDS)
            _, inputs = self._prefill_inputs(n - 1, args, inputs)
            inputs = self._renumbered(layer, n - 1, inputs, pe, ids)
        self._scoring = n
        try:
            layer_scoring.run_own_attention(self.adapter.layers[layer], hidden, inputs)
        finally:
            self._scoring = None

    def _renumbered(self, i: int, n: int, kwargs: dict, pe: Any, ids: Any) -> dict:
        """Layer i (stage n) with its stage's positions; a no-op unless some stage renumbers."""
        if self._renumbering is None:
            return kwargs
        return self._renumbering.apply(i, n, kwargs, pe, ids, self._call.prefill, self._memoized)

    def _record_stats(self, scores: torch.Tensor) -> None:
        call = self._call
        self.stats = PruneStats.of_prefill(
            [s.layer for s in self.stages],
            self._done,
            scores,
            self.method.mode == "drop",
            call.prompt_len,
            self.adapter.text_config,
            self.adapter.num_layers,
        )

    def _memoized(self, key: Any, obj: Any, fn) -> Any:
        """fn(obj), computed once per forward: every layer receives the same mask/position objects."""
        hit = self._memo.get((key, id(obj)))
        if hit is None or hit[0] is not obj:
            hit = (obj, fn(obj))
            self._memo[(key, id(obj))] = hit
        return hit[1]

    def _prefill_inputs(self, n: int, args: tuple, kwargs: dict):
        sel, call = self._done[n], self._call
        if self.method.mode == "mask":
            kwargs[compat.ATTENTION_MASK] = self._memoized(
                n,
                kwargs.get(compat.ATTENTION_MASK),
                lambda m: masks.restrict_columns(m, sel.keep_mask, call.prompt_len, masks.dtype_of(m)),
            )
            return args, kwargs
        index = sel.index
        pe = kwargs.get(compat.POSITION_EMBEDDINGS)
        if pe is not None:
            kwargs[compat.POSITION_EMBEDDINGS] = self._memoized(
                n, pe, lambda p: tuple(positions.take_columns(t, index, -2) for t in p)
            )
        if kwargs.get(compat.POSITION_IDS) is not None:
            kwargs[compat.POSITION_IDS] = self._memoized(
                n, kwargs[compat.POSITION_IDS], lambda p: positions.take_columns(p, index, -1)
            )
        kwargs[compat.ATTENTION_MASK] = self._memoized(
            n, kwargs.get(compat.ATTENTION_MASK), lambda m: masks.prefill_mask(m, sel)
        )
        return args, kwargs

    def _decode_inputs(self, i: int, n: int, args: tuple, kwargs: dict):
        sel, call = self._done[n], self._call
        hs = compat.hidden_states(args, kwargs)
        q_len = hs.shape[1]
        full_total = call.past_len + q_len
        new = full_total - call.prompt_len
        if self.method.mode == "mask":
            ones = torch.ones(sel.keep_mask.shape[0], new, dtype=torch.bool, device=hs.device)
            col_ok = torch.cat([sel.keep_mask, ones], dim=1)
            kwargs[compat.ATTENTION_MASK] = self._memoized(
                n,
                kwargs.get(compat.ATTENTION_MASK),
                lambda m: masks.restrict_columns(m, col_ok, q_len, masks.dtype_of(m)),
            )
            return args, kwargs
        kept = sel.index.shape[1]
        if i == self.stages[n].layer:
            cache = compat.find_cache(kwargs, args)
            if cache is None:
                raise compat.incompatible(f"decoder layer {i} received no KV cache during a decode step")
            have = compat.layer_cache_length(cache, i)
            if have != kept + new - q_len:
                raise FastVError(
                    f"layer {i} caches {have} tokens but this handle's prefill kept {kept}: the cache was not "
                    "filled by this prefill; start generation from the prompt again"
                )
        kwargs[compat.ATTENTION_MASK] = self._memoized(
            n,
            kwargs.get(compat.ATTENTION_MASK),
            lambda m: masks.decode_mask(m, self._done, n, call.prompt_len, full_total, q_len),
        )
        return args, kwargs
