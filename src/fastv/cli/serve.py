"""`fastv serve`: vLLM's OpenAI-compatible server on 127.0.0.1 with a fastv-pruned model."""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys

import typer
from rich.markup import escape

from fastv.cli import app, make_console
from fastv.core.errors import FastVError
from fastv.serving.launch import ServeSpec


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def serve(
    ctx: typer.Context,
    model: str = typer.Option("default", help="'default' or a local LLaVA-1.5 or Qwen2.5-VL checkpoint folder."),
    method: str | None = typer.Option(None, help="random, uniform, pool, divprune or visionzip; none: unpruned."),
    keep: int | None = typer.Option(None, help="Visual tokens kept per image."),
    ratio: float | None = typer.Option(None, help="Share of each image's visual tokens dropped (instead of --keep)."),
    seed: int | None = typer.Option(None, help="Seed (random)."),
    port: int = typer.Option(8000, help="Port on 127.0.0.1."),
    served_name: str | None = typer.Option(None, help="Model name in requests (default: --model)."),
    renumber: bool = typer.Option(
        False, "--renumber-positions", help="Let vLLM number kept tokens 0..L'-1 (default: original positions)."
    ),
    allow_text_only: bool = typer.Option(False, "--allow-text-only", help="Serve requests without an image."),
    per_request: bool = typer.Option(
        False,
        "--per-request-methods",
        help="Let requests choose their own method and budget (mm_processor_kwargs; trusted clients only).",
    ),
    kv_cache_gib: float | None = typer.Option(
        None, help="KV cache size in GiB (default: vLLM's own; 1 GiB on machines without CUDA)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the vLLM command and exit."),
) -> None:
    """Start vLLM's OpenAI server with a pruned model; arguments after `--` go to vLLM.

    Runs fastv's pre-LM methods inside vLLM (see docs/serving.md for why FastV's own in-LLM cut does not).
    """
    console = make_console()
    settings = None
    if method is not None and method != "none":
        given = {"keep": keep, "ratio": ratio, "seed": seed}
        settings = {"method": method, **{k: v for k, v in given.items() if v is not None}}
    if kv_cache_gib is None and not _has_cuda():
        kv_cache_gib = 1.0
    spec = ServeSpec(
        model,
        settings,
        port=port,
        served_name=served_name or model,
        original_positions=not renumber,
        require_image=not allow_text_only,
        kv_cache_gib=kv_cache_gib,
        per_request=per_request,
        extra_args=list(ctx.args),
    )
    try:
        kept = spec.check()
        if not dry_run and importlib.util.find_spec("vllm") is None:
            raise FastVError("vLLM is not installed: pip install 'fastv-lvlm[vllm]' (CPU-only: see docs/serving.md)")
        cmd = spec.command()
    except FastVError as err:
        console.print(f"[red]error:[/red] {escape(str(err))}")  # messages hold [brackets]
        raise typer.Exit(2) from err
    if settings is None:
        what = "unpruned"
    elif kept is not None:
        what = f"{settings['method']}, {kept} visual tokens kept per image"
    else:  # images of different sizes keep different counts (Qwen2.5-VL)
        what = ", ".join(f"{k}={v}" for k, v in settings.items()) + " per image"

    console.print(f"serving {model} ({what}) at {spec.url}", markup=False, highlight=False)
    console.print("try:", spec.curl_example(), markup=False, highlight=False, soft_wrap=True)
    if dry_run:
        print(shlex.join(cmd))
        return
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
