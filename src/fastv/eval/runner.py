"""Run every setting on the same samples, one (setting, sample) pair at a time, resumably.

Sample-major order: a sample's inputs are built once and every setting runs on them back to back,
so partial runs already compare settings on the same samples and latencies share the same load.
Under `accelerate launch`, samples are sharded by index across processes; the main process merges.

Each pair runs twice under its pruner: a one-token generation, timed as the prefill (time to first
token) and kept for its whole first-token distribution, then the answer's full generation. The
full model's first-token log-probs stay in memory while the sample's settings run (recomputed when
the full model's record comes from an earlier run), so every record gets its exact KL from them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fastv import flops as F
from fastv import run
from fastv.core.call import visual_mask
from fastv.core.errors import FastVError
from fastv.core.hf.families import resolve
from fastv.eval.data import EvalSample
from fastv.eval.loyalty import loyalty
from fastv.eval.metrics import sample_scores
from fastv.eval.settings import Setting
from fastv.eval.store import ResultStore
from fastv.loading import build_inputs, to_model

TOP_K = 5  # first-token top-k log-probs kept on disk for inspection (the exact KL is computed in memory)


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a data-parallel run (rank 0 of 1 without accelerate)."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    state: Any = None  # accelerate.PartialState when available

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.state is not None and self.world_size > 1:
            self.state.wait_for_everyone()


def dist_state(cpu: bool = False) -> Dist:
    """accelerate's view of the launch (`accelerate launch` sets it up); single process otherwise."""
    try:
        from accelerate import PartialState
    except ImportError:
        return Dist()
    state = PartialState(cpu=cpu)
    return Dist(state.process_index, state.num_processes, state.device, state)


def shard(samples: Sequence[EvalSample], rank: int, world_size: int) -> list[EvalSample]:
    """Every world_size-th sample from `rank`: disjoint shards that cover all samples."""
    return list(samples[rank::world_size])


@dataclass
class Generation:
    text: str
    token_ids: list[int]
    stats: Any
    seconds: float
    first_ids: list[int]
    first_logprobs: list[float]
    logprobs: torch.Tensor  # (vocab,) the first generated token's log-probs, float32 on CPU


def generate(model: Any, processor: Any, inputs: dict[str, Any], pruner: Any, max_new_tokens: int) -> Generation:
    """Greedy generation under `pruner` (None = full model), keeping the first token's log-probs.

    With max_new_tokens=1 its `seconds` is the time to first token: vision tower, prefill, one pick.
    """
    out = run.generate(model, processor, inputs, pruner, max_new_tokens=max_new_tokens, logprobs=True)
    top = out.logprobs.topk(min(TOP_K, out.logprobs.shape[-1]))
    first_ids, first_logprobs = top.indices.tolist(), [round(v, 5) for v in top.values.tolist()]
    return Generation(out.text, out.token_ids, out.stats, out.seconds, first_ids, first_logprobs, out.logprobs)


class FlopsModel:
    """Per-sample FLOPs from the measured per-layer sequence lengths (see `fastv.flops`)."""

    def __init__(self, model: Any) -> None:
        self.model, self.config = model, model.config
        self.adapter = resolve(model)

    def n_visual(self, input_ids: torch.Tensor) -> int:
        return int(visual_mask(input_ids, self.adapter.visual_token_ids).sum())

    def vision(self, n_visual: int) -> int | None:
        """The vision tower's and projector's FLOPs; None (recorded as such, never as 0) for a tower
        layout `fastv.flops.vision` does not know, so an eval still runs and its records say why."""
        v = F.vision_flops(self.config, n_visual=n_visual or None)
        if v.tower == 0 and v.note:  # "vision tower of <family> not counted"
            return None
        return int(v.tower + v.projector)

    def decode(self, layer_seq_lens: Sequence[int], new_tokens: int) -> int:
        """Decode steps after the first token: each layer's cache holds its prefill length + tokens so far."""
        return sum(
            int(F.decode_step_flops(self.config, [n + t for n in layer_seq_lens]))
            for t in range(max(new_tokens - 1, 0))
        )


def _record(
    setting: Setting,
    sample: EvalSample,
    gen: Generation,
    first: Generation,
    reference: torch.Tensor,
    fm: FlopsModel,
    prompt_len: int,
    n_visual: int,
    vision_flops: int | None,
    rank: int,
) -> dict[str, Any]:
    stats = gen.stats
    lens = run.layer_seq_lens(fm.model, stats, prompt_len)
    kept = sum(stats.num_kept) if stats is not None and stats.num_visual else n_visual
    prefill_llm = run.prefill_flops(fm.model, stats, prompt_len)
    return {
        "setting": setting.name,
        "params": setting.params,
        "sample_id": sample.id,
        "sample_fp": sample.fingerprint,
        "kind": sample.kind,
        "question": sample.question,
        "answers": sample.answers,
        "choices": sample.choices,
        "scoring": sample.scoring,
        "prediction": gen.text,
        "token_ids": gen.token_ids,
        "scores": sample_scores(gen.text, sample.answers, sample.choices),
        "first_token": {"ids": gen.first_ids, "logprobs": gen.first_logprobs},
        "prompt_len": prompt_len,
        "n_visual": n_visual,
        "n_kept": kept,
        "layer_seq_lens": lens,
        "flops_prefill_llm": prefill_llm,
        # the LLM's alone when the tower's count is unknown: flops_vision says which
        "flops_prefill": prefill_llm + (vision_flops or 0),
        "flops_vision": vision_flops,
        "flops_decode": fm.decode(lens, len(gen.token_ids)),
        "seconds": round(gen.seconds, 5),
        "prefill_seconds": round(first.seconds, 5),
        **loyalty(reference, first.logprobs),
        "new_tokens": len(gen.token_ids),
        "rank": rank,
    }


def run_settings(
    model: Any,
    processor: Any,
    samples: Sequence[EvalSample],
    settings: Sequence[Setting],
    store: ResultStore,
    max_new_tokens: int = 16,
    dist: Dist | None = None,
    progress: bool = True,
    on_record: Callable[[dict[str, Any]], None] | None = None,
) -> int:
    """Run this process' shard; skip pairs already on disk. Returns how many pairs it ran."""
    dist = dist or Dist()
    check_video(model, samples)
    for setting in settings:  # refuse a bad setting (k past the last layer, unsupported model) before any work
        pruner = setting.make()
        if pruner is not None:
            with _named(setting):
                pruner.apply(model).remove()
    mine = shard(samples, dist.rank, dist.world_size)
    done = store.done()
    todo = [(s, _full_first([st for st in settings if (st.name, s.id) not in done])) for s in mine]
    todo = [(s, sts) for s, sts in todo if sts]
    total = sum(len(sts) for _, sts in todo)
    fm = FlopsModel(model)
    if todo:  # unrecorded runs first: budgets checked on real inputs, and no latency pays for lazy setup
        sample = todo[0][0]
        inputs = to_model(build_inputs(processor, sample.load_images(), sample.prompt, video=sample.video), model)
        generate(model, processor, inputs, None, 1)
        pending = {st.name: st for _, sts in todo for st in sts if not st.is_full}
        for setting in pending.values():
            with _named(setting, sample):
                generate(model, processor, inputs, setting.make(), 1)
    bar = None
    if progress:
        from tqdm import tqdm

        skipped = len(mine) * len(settings) - total
        desc = f"eval rank {dist.rank}" if dist.world_size > 1 else "eval"
        bar = tqdm(total=len(mine) * len(settings), initial=skipped, desc=desc, unit="run", position=dist.rank)
    ran = 0
    try:
        for sample, pending in todo:
            inputs = to_model(build_inputs(processor, sample.load_images(), sample.prompt, video=sample.video), model)
            prompt_len = int(inputs["input_ids"].shape[1])
            n_visual = fm.n_visual(inputs["input_ids"])
            vision = fm.vision(n_visual)
            reference = None  # the full model's first-token log-probs for this sample
            for setting in pending:
                pruner = setting.make()
                first = generate(model, processor, inputs, pruner, 1)
                gen = first if max_new_tokens == 1 else generate(model, processor, inputs, pruner, max_new_tokens)
                if setting.is_full:
                    reference = first.logprobs
                elif reference is None:  # the full model's record is from an earlier run
                    reference = generate(model, processor, inputs, None, 1).logprobs
                record = _record(setting, sample, gen, first, reference, fm, prompt_len, n_visual, vision, dist.rank)
                store.append(record)
                ran += 1
                if bar is not None:
                    bar.update(1)
                if on_record is not None:
                    on_record(record)
    finally:
        if bar is not None:
            bar.close()
    return ran


def check_video(model: Any, samples: Sequence[EvalSample]) -> None:
    """A video on an image-only family would be evaluated with no visual tokens: refuse the run."""
    family = resolve(model).family
    with_video = [s.id for s in samples if s.video]
    if with_video and not family.video:
        raise FastVError(
            f"{len(with_video)} sample(s) have a video (first: id {with_video[0]!r}) but {family.name} models take "
            "images only: drop those rows, or evaluate a video model (Video-LLaVA, LLaVA-OneVision, Qwen2-VL...)"
        )


def _full_first(settings: list[Setting]) -> list[Setting]:
    """The full model first, so its first-token distribution is at hand for every other setting."""
    return sorted(settings, key=lambda s: not s.is_full)


@contextlib.contextmanager
def _named(setting: Setting, sample: EvalSample | None = None):
    """Prefix a refusal with the setting (and sample) it came from: a grid has many."""
    try:
        yield
    except FastVError as err:
        where = f"setting {setting.name!r}" + (f" on sample {sample.id!r}" if sample is not None else "")
        raise type(err)(f"{where}: {err}") from err
