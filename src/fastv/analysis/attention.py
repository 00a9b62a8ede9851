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

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import torch

from fastv import run
from fastv.analysis.layout import GROUPS, Panel, panel_pictures, token_groups, visual_layout
from fastv.analysis.result import Analysis
from fastv.core.errors import FastVError
from fastv.core.hf.attention_tap import install, query_attention
from fastv.core.hf.families import Adapter, resolve
from fastv.methods import FastV, Method

Query = Literal["last", "instruction", "output"]
QUERIES = ("last", "instruction", "output")


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
