"""`fastv eval`: accuracy, FLOPs, prefill time and loyalty of the full model and a grid of methods x budgets.

Works the same under `accelerate launch -m fastv eval ...` (data-parallel; the main process merges).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer
from rich.table import Table

from fastv.cli import app, make_console, validate, warn

DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)


class VqaCompat(str, Enum):
    """`--vqa-compat`: how VQA accuracy is reported (see fastv.eval.metrics.vqa_accuracy)."""

    default = "default"
    official = "official"


@app.command("eval")
def eval_cmd(
    model: str = typer.Option("default", help="'default', a save_pretrained folder, or a hub id."),
    data: str = typer.Option(
        "shapes", help="'shapes[:SPLIT[:N[:KINDS]]]' (built-in), a .jsonl file, parquet, or a save_to_disk folder."
    ),
    method: str = typer.Option(
        "fastv", "--method", help="Comma-separated methods (see `fastv methods`), e.g. fastv,pdrop,visionzip,pool."
    ),
    keep: str | None = typer.Option(
        None,
        "--keep",
        help="Comma-separated budgets: visual tokens kept per image (fastv: per sample; pdrop: mean per layer).",
    ),
    ratio: str | None = typer.Option(
        None,
        "--ratio",
        help="Comma-separated shares R of visual tokens dropped (default 0,0.25,0.5,0.75,0.9 when --keep is not given).",
    ),
    k: str | None = typer.Option(
        None,
        "--k",
        help="Comma-separated layers K for methods that have one (fastv, fastv_mean: default 1,2,3; "
        "random, uniform: default 0); ignored by the others.",
    ),
    scorer: str = typer.Option("last_token", help="Comma-separated FastV scorers: last_token (FastV), random."),
    mode: str = typer.Option("drop", help="drop (the speed-up) or mask (the paper's reference mode)."),
    positions: str | None = typer.Option(
        None,
        "--positions",
        help="Comma-separated: original, contiguous (kept tokens' positions; default: each method's paper).",
    ),
    out: Path = typer.Option(Path("fastv-eval"), help="Output folder; rerunning with the same folder resumes."),
    split: str | None = typer.Option(None, help="Split of a save_to_disk DatasetDict (default: test, validation...)."),
    limit: int | None = typer.Option(None, help="Evaluate the first N samples only."),
    max_new_tokens: int = typer.Option(16, help="Tokens generated per answer."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    attn: str = typer.Option("sdpa", help="Attention implementation: sdpa, eager, flash_attention_2."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete earlier results in --out and start over."),
    cpu: bool = typer.Option(False, "--cpu", help="Stay on CPU even where a GPU is visible."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    vqa_compat: VqaCompat = typer.Option(
        VqaCompat.default,
        "--vqa-compat",
        help="VQA accuracy: 'default' (answers always normalised, as lmms-eval) or 'official' (vqaEval.py exactly).",
    ),
) -> None:
    """Run the full model and every (method, budget, K, scorer) on the same samples; write predictions.jsonl,
    summary.{md,csv,json} and pareto.png to --out. Interrupted runs resume where they stopped."""
    from fastv.eval.data import load_samples
    from fastv.eval.pipeline import EvalConfig, evaluate
    from fastv.eval.report import cider_note, table_cells
    from fastv.eval.settings import method_grid, parse_list

    console = make_console()
    info = validate.model(model)
    validate.dtype(dtype)
    validate.attn(attn)
    validate.max_new_tokens(max_new_tokens)
    validate.at_least("--limit", limit, 1, "or leave --limit out to evaluate every sample")
    validate.new_file_folder("--out", out)
    keeps = parse_list(keep, int, "keep") if keep is not None else []
    ratios = parse_list(ratio, float, "ratio") if ratio is not None else [] if keeps else list(DEFAULT_RATIOS)
    settings = method_grid(
        parse_list(method, str, "method"),
        keeps,
        ratios,
        parse_list(k, int, "k") if k is not None else None,
        parse_list(scorer, str, "scorer"),
        mode,
        parse_list(positions, str, "positions") if positions is not None else (None,),
    )
    for s in settings:
        if "k" in s.params:
            validate.layer("--k", s.params["k"], info)
    samples = load_samples(data, split, limit)  # every row and image checked before the model loads
    if with_video := next((s for s in samples if s.video), None):
        validate.video_support(info, True, f"--data row {with_video.id!r} has a video")
    cfg = EvalConfig(
        model, data, out, split, limit, max_new_tokens, dtype, attn, fresh, progress, cpu, vqa_compat=vqa_compat.value
    )
    result = evaluate(cfg, settings, samples=samples)
    if result is None:  # not the main process: it has nothing to print
        return
    header, cells = table_cells(result.rows)
    table = Table(title=f"{model} on {data}")
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i == 0 else "right")
    for row in cells:
        table.add_row(*row)
    console.print(table)
    note = cider_note(result.rows)
    if note:
        console.print(f"[dim]{note}[/dim]")
    console.print(
        f"[dim]ran {result.ran} new (setting, sample) pairs; wrote "
        + ", ".join(str(p) for p in result.files)
        + "[/dim]"
    )
    for note in result.notes:
        warn(note)
