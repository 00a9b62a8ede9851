"""`fastv demo`: a local web page comparing the full model and FastV on one image and prompt."""

from __future__ import annotations

import os

import typer

from fastv.cli import app, make_console, validate
from fastv.core.errors import FastVError


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
    validate.model(model)
    validate.dtype(dtype)
    validate.max_new_tokens(max_new_tokens)
    validate.port(host, port)  # a busy port is refused now, not after Gradio and the model loaded
    try:
        from fastv.demo.app import serve, serve_forever
    except ImportError as err:
        raise FastVError(f"the demo needs Gradio: pip install 'fastv-lvlm[demo]' ({err})") from err
    from fastv.demo.logic import Demo
    from fastv.loading import load_model

    net, processor = load_model(model, dtype=dtype)
    runner = Demo(net, processor, name=model, max_new_tokens=max_new_tokens)
    console.print("[dim]warming up the model...[/dim]")
    runner.warmup()
    try:
        page = serve(runner, host=host, port=port, block=False)
    except OSError as err:  # taken between the check and now
        raise FastVError(f"cannot serve on {host}:{port} ({err}): pick another with --port {port + 1}") from err
    console.print(f"fastv demo on http://{host}:{port}  (model: {model}; Ctrl+C to stop)")
    serve_forever(page)
