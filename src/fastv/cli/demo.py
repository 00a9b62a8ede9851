"""`fastv demo`: a local web page comparing the full model and FastV on one image and prompt."""

from __future__ import annotations

import os

import typer

from fastv.cli import app, make_console
from fastv.errors import FastVError


@app.command()
def demo(
    model: str = typer.Option("default", help="'default' (the shipped model) or a save_pretrained folder."),
    host: str = typer.Option("127.0.0.1", help="Address to serve on (keep it local)."),
    port: int = typer.Option(7860, help="Port to serve on."),
    max_new_tokens: int = typer.Option(12, help="Tokens each answer may have."),
    dtype: str = typer.Option("float32", help="float32, bfloat16 or float16."),
) -> None:
    """Start the demo (needs the `demo` extra: pip install 'fastv-lvlm[demo]'); Ctrl+C stops it."""
    console = make_console()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never downloads: local models only
    try:
        from fastv.demo.app import serve
    except ImportError as err:
        console.print(f"[red]error:[/red] the demo needs Gradio: pip install 'fastv-lvlm[demo]' ({err})")
        raise typer.Exit(2) from err
    from fastv.demo.logic import Demo
    from fastv.loading import load_model

    try:
        net, processor = load_model(model, dtype=dtype)
        runner = Demo(net, processor, name=model, max_new_tokens=max_new_tokens)
    except (FastVError, FileNotFoundError) as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from err
    console.print("[dim]warming up the model...[/dim]")
    runner.warmup()
    console.print(f"fastv demo on http://{host}:{port}  (model: {model}; Ctrl+C to stop)")
    serve(runner, host=host, port=port)
