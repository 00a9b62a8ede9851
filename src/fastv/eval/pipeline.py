"""`evaluate()`: load, run this process' shard, then (main process only) merge and report.

The one entry point the CLI and `accelerate launch -m fastv eval` share; each process runs the same
code, and only the main process writes the manifest, the merged predictions and the summary.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fastv.core.errors import FastVError
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
    notes: list[str] = field(default_factory=list)  # results that are correct but probably not what was meant


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
    if out.exists() and not out.is_dir():
        raise FastVError(f"--out {str(out)!r} is a file: give a folder")
    samples = samples if samples is not None else load_samples(cfg.data, cfg.split, cfg.limit)
    store = ResultStore(out, dist.rank)
    created = not out.exists()
    with contextlib.ExitStack() as stack:
        if dist.is_main:  # one run per folder; the others wait: they would read a manifest being written
            stack.enter_context(store.lock())
            if cfg.fresh:
                store.clear()
        try:
            return _run(cfg, settings, samples, store, model, processor, dist, on_record)
        except FastVError:
            # A refused run leaves no trace that would block the folder (a manifest, or a new empty folder).
            if dist.is_main and not store.done():
                store.remove_manifest()
                if created:
                    stack.close()
                    _remove_empty(out)
            raise


def _remove_empty(out: Path) -> None:
    for child in out.iterdir() if out.is_dir() else []:
        if child.name != ".lock" and not (child.is_dir() and not any(child.iterdir())):
            return
    for child in sorted(out.iterdir(), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    out.rmdir()


def data_fingerprint(samples: list[EvalSample]) -> str:
    """One hash over the samples' ids and contents, recorded in the manifest."""
    h = hashlib.sha1()
    for s in samples:
        h.update(f"{s.id}\0{s.fingerprint}\n".encode())
    return h.hexdigest()


def _run(
    cfg: EvalConfig,
    settings: list[Setting],
    samples: list[EvalSample],
    store: ResultStore,
    model: Any,
    processor: Any,
    dist: Dist,
    on_record,
) -> EvalResult | None:
    out = Path(cfg.out)
    manifest = {**cfg.manifest(settings), "data_fingerprint": data_fingerprint(samples)}
    if dist.is_main:
        store.check_manifest(manifest, write=False)
        store.check_samples(samples)
        store.check_manifest(manifest, write=True)
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
    return EvalResult(rows, out, files, ran, edge_notes(records, _context_window(model)))


def _context_window(model: Any) -> int | None:
    config = getattr(model, "config", None)
    window = getattr(getattr(config, "text_config", None) or config, "max_position_embeddings", None)
    return window if isinstance(window, int) else None


def edge_notes(records: list[dict[str, Any]], window: int | None) -> list[str]:
    """Settings that kept no visual token on some samples, and samples past the context window."""
    notes = []
    for name in dict.fromkeys(r["setting"] for r in records):
        rs = [r for r in records if r["setting"] == name and r["n_visual"]]
        empty = sum(1 for r in rs if not r["n_kept"])
        if empty:
            notes.append(
                f"{name!r} kept 0 visual tokens on {empty} of {len(rs)} samples: those answers never saw the "
                "image; use a smaller --ratio or a larger --keep"
            )
    if window:
        long = list(dict.fromkeys(r["sample_id"] for r in records if r["prompt_len"] + r["new_tokens"] > window))
        if long:
            notes.append(
                f"{len(long)} sample(s) run past the model's context window of {window} tokens (first: "
                f"{long[0]!r}): their answers are meaningless; shorten those prompts or use fewer images"
            )
    return notes
