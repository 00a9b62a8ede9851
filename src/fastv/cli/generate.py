"""`fastv generate`: answer one prompt about an image or video, with FastV (or `--no-fastv`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from fastv.cli import app, make_console, validate, warn
from fastv.core.errors import FastVError
from fastv.generate import answer, context_note, kept_note
from fastv.loading import build_inputs, load_model, to_model
from fastv.run import method_from_options, method_settings


def _layer_lens(lens: list[int]) -> str:
    """Run-length view of per-layer sequence lengths: '618 x2, 330 x30'."""
    runs: list[list[int]] = []
    for n in lens:
        if runs and runs[-1][0] == n:
            runs[-1][1] += 1
        else:
            runs.append([n, 1])
    return ", ".join(f"{n} x{c}" for n, c in runs)


@app.command()
def generate(
    prompt: str = typer.Option(..., help="The question or instruction."),
    model: str = typer.Option("default", help="'default', a save_pretrained folder, or a hub id."),
    image: list[Path] = typer.Option([], help="Image file (repeat for several images)."),
    video: Path | None = typer.Option(None, help="Folder of video frames (video-capable models)."),
    method: str = typer.Option("fastv", help="Method (see `fastv methods`), or a composition such as visionzip+fastv."),
    k: int = typer.Option(2, help="Layer at which pruning starts (methods that have a k)."),
    ratio: float | None = typer.Option(None, help="Share of visual tokens dropped (default 0.5)."),
    keep: int | None = typer.Option(None, help="Visual tokens kept per sample (instead of --ratio)."),
    scorer: str = typer.Option("last_token", help="last_token (FastV) or random."),
    no_fastv: bool = typer.Option(False, "--no-fastv", help="Run the full model for comparison."),
    max_new_tokens: int = typer.Option(32, help="Tokens to generate."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
    attn: str = typer.Option("sdpa", help="Attention implementation: sdpa, eager, flash_attention_2."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Print the answer and what FastV kept: visual tokens kept / total and sequence length per layer."""
    console = make_console()
    pruner = None if no_fastv else method_from_options(method, k=k, ratio=ratio, keep=keep, scorer=scorer)
    if not image and video is None:
        raise FastVError("give --image FILE (or --video FRAMES_DIR): FastV prunes visual tokens")
    info = validate.model(model)
    validate.dtype(dtype)
    validate.attn(attn)
    validate.max_new_tokens(max_new_tokens)
    if pruner is not None and "k" in method_settings(method):
        validate.layer("--k", k, info)
    validate.video_support(info, video is not None)
    validate.images(image)
    validate.video(video)
    net, processor = load_model(model, dtype=dtype, attn=attn)
    validate.loaded_video_support(net, video is not None)
    inputs = to_model(build_inputs(processor, image, prompt, video=video), net)
    if note := context_note(net, inputs, max_new_tokens):
        warn(note)
    result = answer(net, processor, inputs, pruner, max_new_tokens=max_new_tokens)
    if note := kept_note(result.stats):
        warn(note)
    s = result.stats
    record = {
        "answer": result.text,
        "fastv": pruner is not None,
        "visual_kept": sum(s.num_kept) if s else None,
        "visual_total": sum(s.num_visual) if s else None,
        "layer_seq_lens": s.layer_seq_lens if s else None,
        "seconds": round(result.seconds, 4),
    }
    if as_json:
        print(json.dumps(record))
        return
    console.print(result.text, markup=False, highlight=False)
    if s is None:
        console.print(f"[dim]full model, {result.seconds:.2f} s[/dim]")
    else:
        console.print(
            f"[dim]visual tokens kept {record['visual_kept']}/{record['visual_total']}; "
            f"sequence length per layer: {_layer_lens(s.layer_seq_lens)}; {result.seconds:.2f} s[/dim]"
        )
