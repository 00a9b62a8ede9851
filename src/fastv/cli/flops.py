"""`fastv flops`: FastV's FLOPs for a named model shape or a local config, and a budget solver."""

from __future__ import annotations

import json
import math

import typer
from rich.table import Table

from fastv import flops as F
from fastv.cli import app, make_console, validate
from fastv.core.errors import FastVError
from fastv.eval.settings import parse_list
from fastv.flops.shapes import KNOWN_SHAPES


def _known_table() -> Table:
    table = Table(title="Known model shapes (config facts only, no weights)")
    for col in ("name", "checkpoint", "LLM (d / FFN / layers / heads / kv)", "note"):
        table.add_column(col)
    for s in KNOWN_SHAPES.values():
        t = s.text
        dims = (
            f"{t['hidden_size']} / {t['intermediate_size']} / {t['num_hidden_layers']} / "
            f"{t['num_attention_heads']} / {t['num_key_value_heads']}"
        )
        table.add_row(s.name, s.hf_id, dims, s.note)
    return table


def _report_table(rows: list[F.FlopsReport], title: str) -> Table:
    table = Table(title=title)
    for col in ("model", "visual+text", "K", "R", "kept", "vision+proj", "LLM full", "LLM FastV"):
        table.add_column(col, justify="right" if col != "model" else "left")
    for col in ("LLM -%", "total -%", "paper formula -%", "speed-up"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.model,
            f"{r.n_visual}+{r.n_text}",
            str(r.k),
            f"{r.ratio:.3f}",
            str(r.kept),
            F.format_flops(r.vision_tower + r.projector),
            F.format_flops(r.llm_full),
            F.format_flops(r.llm_fastv),
            f"{r.llm_reduction:.1%}",
            f"{r.total_reduction:.1%}",
            f"{r.theory_reduction:.1%}",
            f"x{r.speedup:.2f}",
        )
    return table


def _check(
    k: int,
    ratio: float,
    keep: int | None,
    visual_tokens: int | None,
    text_tokens: int,
    frames: int | None,
    batch: int,
    budget: float | None,
    scope: str,
) -> None:
    validate.at_least("--k", k, 0)
    validate.ratio("--ratio", ratio)
    validate.at_least("--keep", keep, 0)
    validate.at_least("--visual-tokens", visual_tokens, 1)
    validate.at_least("--text-tokens", text_tokens, 0)
    validate.at_least("--frames", frames, 1)
    validate.at_least("--batch", batch, 1)
    if keep is not None and visual_tokens is not None and keep > visual_tokens:
        raise FastVError(f"--keep {keep} is more than --visual-tokens {visual_tokens}")
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise FastVError(f"--budget {budget}: give a fraction of the full model's FLOPs > 0, e.g. 0.5")
    if scope not in ("total", "llm"):
        raise FastVError(f"--scope {scope!r}: choose total or llm")


@app.command("flops")
def flops_cmd(
    model: list[str] = typer.Option(
        ["llava-1.5-7b"], "--model", "-m", help="Known shape name or config.json/folder; repeat to compare."
    ),
    k: int = typer.Option(2, "--k", help="Pruning layer K (layers < K see every token)."),
    ratio: float = typer.Option(0.5, "--ratio", "-r", help="Share R of visual tokens dropped."),
    keep: int | None = typer.Option(None, "--keep", help="Visual tokens kept (instead of --ratio)."),
    visual_tokens: int | None = typer.Option(None, "--visual-tokens", help="Visual tokens in the LLM."),
    text_tokens: int = typer.Option(40, "--text-tokens", help="Prompt tokens besides the visual ones."),
    frames: int | None = typer.Option(None, "--frames", help="A video of this many frames."),
    batch: int = typer.Option(1, "--batch", help="Batch size."),
    budget: float | None = typer.Option(
        None, "--budget", help="List the (K, R) settings within this fraction of the full model's FLOPs."
    ),
    budget_model: str | None = typer.Option(
        None, "--budget-model", help="Measure --budget against this model's full FLOPs (e.g. llava-1.5-7b)."
    ),
    scope: str = typer.Option("total", "--scope", help="Budget over 'total' (vision+LLM) or 'llm' FLOPs."),
    ks: str = typer.Option("1,2,3,4,6,8,12,16", "--ks", help="K values the budget solver tries."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    list_models: bool = typer.Option(False, "--list", help="List the known model shapes and exit."),
) -> None:
    """Prefill FLOPs with and without FastV: exact count (GQA, gated MLP, LM head, vision tower apart)
    and the paper's formula. With --budget, the mildest (K, R) per K that fits a FLOPs budget."""
    console = make_console()
    if list_models:
        console.print(_known_table())
        return
    _check(k, ratio, keep, visual_tokens, text_tokens, frames, batch, budget, scope)
    common = dict(n_visual=visual_tokens, n_text=text_tokens, frames=frames, batch_size=batch)
    try:
        if budget is None:
            rows = [F.estimate(m, k=k, ratio=ratio, kept=keep, **common) for m in model]
            title = f"Prefill FLOPs, FastV K={k} " + (f"keep={keep}" if keep is not None else f"R={ratio:g}")
        else:
            k_list = parse_list(ks, int, "ks")
            if not k_list or min(k_list) < 0:
                raise FastVError(f"--ks {ks!r}: give layers K >= 0, e.g. 1,2,3")
            ref_name = budget_model or None
            rows = []
            for m in model:
                ref = F.estimate(ref_name or m, k=1, ratio=0.0, **common)
                target = budget * (ref.total_full if scope == "total" else ref.llm_full)
                rows += F.solve_budget(m, target, ks=k_list, scope=scope, **common)
            against = f"{ref_name}'s full" if ref_name else "the full model's"
            title = f"Settings within {budget:g} x {against} {scope} FLOPs (mildest R per K)"
    except FastVError:
        raise
    except ValueError as err:  # unknown model, K past the last layer, keep above the visual tokens...
        raise FastVError(str(err)) from err
    if as_json:
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
        return
    if not rows:
        console.print("[yellow]No setting meets that budget.[/yellow]")
        raise typer.Exit(1)
    console.print(_report_table(rows, title))
    notes = {r.vision_note for r in rows if r.vision_note}
    for note in sorted(notes):
        console.print(f"[dim]vision: {note}[/dim]")
    console.print(
        "[dim]FLOPs = 2 x multiply-accumulates, attention dense; speed-up = total full / total FastV. "
        "The paper's formula counts LLM layers only (4nd^2 + 2n^2d + 2ndm).[/dim]"
    )
