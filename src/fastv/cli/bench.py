"""`fastv bench`: prefill/decode timing of FastV vs the unpatched model, against the FLOPs prediction."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer
from rich.markdown import Markdown

from fastv.cli import app, make_console


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


@app.command("bench")
def bench_cmd(
    suite: str = typer.Option("image", "--suite", help="Preset: image, video or all (image then video)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Known shape (random weights) or checkpoint."),
    layers: int | None = typer.Option(None, "--layers", help="Truncate the language model to N layers (0: all)."),
    ks: str | None = typer.Option(None, "--ks", help="Comma-separated K values."),
    ratios: str | None = typer.Option(None, "--ratios", help="Comma-separated pruning ratios R > 0."),
    frames: int | None = typer.Option(None, "--frames", help="Video input with this many frames."),
    repeats: int | None = typer.Option(None, "--repeats", help="Measured rounds (median reported)."),
    warmup: int | None = typer.Option(None, "--warmup", help="Warm-up rounds."),
    new_tokens: int | None = typer.Option(None, "--new-tokens", help="Tokens generated per call."),
    dtype: str | None = typer.Option(None, "--dtype", help="bfloat16 or float32."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default 1)."),
    out: Path = typer.Option(Path("benchmarks/results"), "--out", help="Folder for JSON, PNG and markdown."),
    name: str | None = typer.Option(None, "--name", help="File stem of the outputs (default: the suite)."),
) -> None:
    """Time the full model and FastV(K, R), alternating in one process; write JSON + PNG + table."""
    from fastv import benchmark as B

    console = make_console()
    suites = list(B.SUITES) if suite == "all" else [suite]
    for s in suites:
        if s not in B.SUITES:
            raise typer.BadParameter(f"unknown suite {s!r}: choose from {', '.join(B.SUITES)} or all")
        overrides = {
            "model": model,
            "layers": layers,
            "ks": _ints(ks) if ks else None,
            "ratios": _floats(ratios) if ratios else None,
            "frames": frames,
            "repeats": repeats,
            "warmup": warmup,
            "new_tokens": new_tokens,
            "dtype": dtype,
            "threads": threads,
        }
        cfg = replace(B.SUITES[s], **{k: v for k, v in overrides.items() if v is not None})
        if cfg.layers == 0:
            cfg = replace(cfg, layers=None)
        stem = name if name and len(suites) == 1 else (f"{name}-{s}" if name else s)
        console.print(f"[bold]fastv bench[/bold] {s}: {cfg}")
        result = B.run_and_save(cfg, out, stem)
        console.print(result.model)
        console.print(Markdown(B.markdown_table(result)))
        console.print(f"wrote {out / stem}.json, .png, .md")
