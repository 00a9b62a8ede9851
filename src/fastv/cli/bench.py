"""`fastv bench`: prefill/decode timing of FastV (or any methods) vs the unpatched model, against FLOPs.

Everything is checked before a model is built (building a 7B-wide model takes tens of seconds), and
results go to a new folder per run unless `--out` names one: committed results are never overwritten
without `--force`.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import typer
from rich.markdown import Markdown

from fastv.cli import app, make_console, validate
from fastv.core.errors import FastVError
from fastv.eval.settings import parse_list

BENCH_DTYPES = ("bfloat16", "float32", "float16")
OUTPUTS = (".json", ".png", ".md")


def _model_layers(model: str) -> int:
    """The language model's depth of a known shape or a checkpoint folder (refuses anything else)."""
    from fastv.flops.shapes import KNOWN_SHAPES

    if model.lower() in KNOWN_SHAPES:
        return int(KNOWN_SHAPES[model.lower()].text["num_hidden_layers"])
    path = Path(model)
    if path.is_dir():
        info = validate.model(model)
        if info.num_layers is None:
            raise FastVError(f"--model {model!r}: its config.json names no num_hidden_layers")
        return info.num_layers
    raise FastVError(
        f"--model {model!r}: not a known shape ({', '.join(KNOWN_SHAPES)}; see `fastv flops --list`) "
        "nor a save_pretrained folder"
    )


def check_config(cfg) -> None:
    """Refuse a benchmark configuration that would fail (or mislead) after the model is built."""
    validate.dtype(cfg.dtype, BENCH_DTYPES)
    validate.at_least("--repeats", cfg.repeats, 1, "the median needs at least one measured round")
    validate.at_least("--warmup", cfg.warmup, 0)
    validate.at_least("--new-tokens", cfg.new_tokens, 1)
    validate.at_least("--frames", cfg.frames, 1)
    validate.at_least("--threads", cfg.threads, 1)
    validate.at_least("--layers", cfg.layers, 0, "0 keeps every layer")
    if not cfg.ks:
        raise FastVError("--ks: give at least one K, e.g. --ks 1,2,3")
    if not cfg.ratios:
        raise FastVError("--ratios: give at least one R, e.g. --ratios 0.5,0.75")
    for r in cfg.ratios:
        validate.ratio("--ratios", r)
    for n in cfg.keeps:
        validate.at_least("--keep", n, 0)
    depth = _model_layers(cfg.model)
    if cfg.layers:
        depth = min(depth, cfg.layers)
    if cfg.methods:  # each method checks its own settings now; budgets the model cannot hold are skipped later
        for setting in cfg.settings():
            cfg.method(setting)
        if cfg.method_k is not None and not 0 <= cfg.method_k < depth:
            raise FastVError(f"--k {cfg.method_k}: the benchmarked model has {depth} language-model layers")
        return
    for k in sorted({*cfg.ks, cfg.overhead_k}):
        if k < 1:
            raise FastVError(f"--ks {k}: FastV scores attention at layer K-1, so K >= 1")
        if k >= depth:
            what = f"--ks {k}" if k in cfg.ks else f"the overhead setting's K={k}"
            raise FastVError(
                f"{what}: the benchmarked model has {depth} language-model layers; give K in 1..{depth - 1}"
                + (" or more --layers" if cfg.layers else "")
            )


def _default_out() -> Path:
    """A new folder per run: runs/bench-<UTC time> (with a suffix if two start in one second)."""
    base = Path("runs") / f"bench-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def _check_out(out: Path, stems: list[str], force: bool) -> None:
    validate.new_file_folder("--out", out)
    taken = [out / f"{stem}{ext}" for stem in stems for ext in OUTPUTS if (out / f"{stem}{ext}").exists()]
    if taken and not force:
        raise FastVError(
            f"--out {str(out)!r} already holds {', '.join(p.name for p in taken)}: give another --out or --name, "
            "or --force to overwrite"
        )


@app.command("bench")
def bench_cmd(
    suite: str = typer.Option("image", "--suite", help="Preset: image, video or all (image then video)."),
    model: str | None = typer.Option(None, "--model", "-m", help="Known shape (random weights) or checkpoint."),
    layers: int | None = typer.Option(None, "--layers", help="Truncate the language model to N layers (0: all)."),
    ks: str | None = typer.Option(None, "--ks", help="Comma-separated K values."),
    ratios: str | None = typer.Option(None, "--ratios", help="Comma-separated pruning ratios R > 0."),
    method: str | None = typer.Option(
        None, "--method", help="Comma-separated methods (`fastv methods`, compositions a+b) instead of FastV's K x R."
    ),
    keep: str | None = typer.Option(
        None, "--keep", help="With --method: comma-separated budgets, visual tokens kept (default: --ratios)."
    ),
    k: int | None = typer.Option(
        None, "--k", help="With --method: the layer of methods that have one (default: each's)."
    ),
    frames: int | None = typer.Option(None, "--frames", help="Video input with this many frames."),
    repeats: int | None = typer.Option(None, "--repeats", help="Measured rounds (median reported)."),
    warmup: int | None = typer.Option(None, "--warmup", help="Warm-up rounds."),
    new_tokens: int | None = typer.Option(None, "--new-tokens", help="Tokens generated per call."),
    dtype: str | None = typer.Option(None, "--dtype", help="bfloat16 or float32."),
    threads: int | None = typer.Option(None, "--threads", help="torch threads (default 1)."),
    out: Path | None = typer.Option(
        None, "--out", help="Folder for JSON, PNG and markdown (default: a new runs/bench-<UTC time>)."
    ),
    name: str | None = typer.Option(None, "--name", help="File stem of the outputs (default: the suite)."),
    force: bool = typer.Option(False, "--force", help="Overwrite outputs of the same name in --out."),
) -> None:
    """Time the full model and FastV(K, R), or --method x --keep, alternating in one process; JSON + PNG + table."""
    from fastv.bench import measure as B
    from fastv.bench import report
    from fastv.bench.models import SUITES

    console = make_console()
    suites = list(SUITES) if suite == "all" else [suite]
    if any(s not in SUITES for s in suites):
        raise FastVError(f"--suite {suite!r}: choose from {', '.join(SUITES)} or all")
    if name is not None and (not name.strip() or Path(name).name != name or name.startswith(".")):
        raise FastVError(f"--name {name!r}: give a plain file stem (no folders), e.g. --name image-cpu")
    plan = []
    for s in suites:  # every suite checked before the first one runs
        overrides = {
            "model": model,
            "layers": layers,
            "ks": tuple(parse_list(ks, int, "ks")) if ks is not None else None,
            "ratios": tuple(parse_list(ratios, float, "ratios")) if ratios is not None else None,
            "methods": tuple(parse_list(method, str, "method")) if method is not None else None,
            "keeps": tuple(parse_list(keep, int, "keep")) if keep is not None else None,
            "method_k": k,
            "frames": frames,
            "repeats": repeats,
            "warmup": warmup,
            "new_tokens": new_tokens,
            "dtype": dtype,
            "threads": threads,
        }
        cfg = replace(SUITES[s], **{key: v for key, v in overrides.items() if v is not None})
        if keep is not None and not cfg.methods:
            raise FastVError(
                "--keep is a budget for --method: give --method fastv,pdrop,... (FastV's grid takes --ratios)"
            )
        if cfg.methods and cfg.vision_layers < 3:
            # VisionZip & co read the tower's attention at layer -2; FlowCut prunes in the layers before it
            cfg = replace(cfg, vision_layers=3)
        check_config(cfg)
        if cfg.layers == 0:
            cfg = replace(cfg, layers=None)
        default = f"{s}-methods" if cfg.methods else s
        stem = name if name and len(suites) == 1 else (f"{name}-{s}" if name else default)
        plan.append((s, cfg, stem))
    out = out if out is not None else _default_out()
    _check_out(out, [stem for _, _, stem in plan], force)
    for s, cfg, stem in plan:
        console.print(f"[bold]fastv bench[/bold] {s}: {cfg}")
        result = B.run_and_save(cfg, out, stem)
        console.print(result.model)
        console.print(Markdown(report.markdown_table(result)))
        console.print(f"wrote {out / stem}.json, .png, .md")
