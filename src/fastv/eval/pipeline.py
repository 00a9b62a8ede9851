"""`evaluate()`: load, run this process' shard, then (main process only) merge and report.

The one entry point the CLI and `accelerate launch -m fastv eval` share; each process runs the same
code, and only the main process writes the manifest, the merged predictions and the summary.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastv.errors import FastVError
from fastv.eval.data import EvalSample, load_samples
from fastv.eval.metrics import VQA_COMPAT
from fastv.eval.report import pareto_plot, rescore, summarize, write_summary
from fastv.eval.runner import Dist, dist_state, run_settings
from fastv.eval.settings import Setting
from fastv.eval.store import ResultStore


@dataclass
class EvalConfig:
    model: str
    data: str
    out: Path
    split: str | None = None
    limit: int | None = None
    max_new_tokens: int = 16
    dtype: str = "float32"
    attn: str = "sdpa"
    fresh: bool = False
    progress: bool = True
    cpu: bool = False
    vqa_compat: str = "default"  # how VQA accuracy is reported (fastv.eval.metrics.vqa_accuracy); not a run input

    def __post_init__(self) -> None:
        if self.vqa_compat not in VQA_COMPAT:
            raise FastVError(f"--vqa-compat {self.vqa_compat!r}: use {' or '.join(VQA_COMPAT)}")

    def manifest(self, settings: list[Setting]) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("out", "fresh", "progress", "cpu", "vqa_compat")}
        d["settings"] = [{"name": s.name, **s.params} for s in settings]
        return d


@dataclass
class EvalResult:
    rows: list[dict[str, Any]]
    out: Path
    files: list[Path] = field(default_factory=list)
    ran: int = 0


def evaluate(
    cfg: EvalConfig,
    settings: list[Setting],
    model: Any = None,
    processor: Any = None,
    samples: list[EvalSample] | None = None,
    dist: Dist | None = None,
    on_record=None,
) -> EvalResult | None:
    """Run `settings` on the data; returns the summary on the main process, None on the others."""
    dist = dist or dist_state(cfg.cpu)
    out = Path(cfg.out)
    if cfg.fresh and dist.is_main and out.exists():
        shutil.rmtree(out)
    samples = samples if samples is not None else load_samples(cfg.data, cfg.split, cfg.limit)
    store = ResultStore(out, dist.rank)
    if dist.is_main:  # the others wait: they would read a manifest being written
        store.check_manifest(cfg.manifest(settings), write=True)
    dist.barrier()
    if model is None:
        from fastv.loading import load_model

        model, processor = load_model(cfg.model, dtype=cfg.dtype, attn=cfg.attn)
        model.to(dist.device)
    ran = run_settings(
        model,
        processor,
        samples,
        settings,
        store,
        max_new_tokens=cfg.max_new_tokens,
        dist=dist,
        progress=cfg.progress,
        on_record=on_record,
    )
    dist.barrier()
    if not dist.is_main:
        return None
    ids = [s.id for s in samples]
    names = [s.name for s in settings]
    # A folder can grow over several runs (more methods, budgets): report every setting it holds.
    names += [n for n in dict.fromkeys(r["setting"] for r in store.records(samples=ids)) if n not in names]
    records = rescore(store.records(names, ids), cfg.vqa_compat)
    files = [store.write_merged(records)]
    rows = summarize(records, names)
    files += write_summary(rows, out)
    plot = pareto_plot(rows, out / "pareto.png", title=f"{cfg.model} on {cfg.data}")
    if plot is not None:
        files.append(plot)
    return EvalResult(rows, out, files, ran)
