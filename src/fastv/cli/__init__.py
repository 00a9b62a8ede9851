"""The `fastv` command line: each verb lives in its own module and registers itself here."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

app = typer.Typer(help="FastV: prune visual tokens inside vision-language models.", no_args_is_help=True)


def make_console() -> Console:
    """Rich console; when piped (no terminal width to read), wide enough for our tables."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _register() -> None:
    # One import per verb module; each module adds its command(s) to `app`.
    from fastv.cli import analyze, bench, demo, flops, generate, methods, serve  # noqa: F401
    from fastv.cli import eval as _eval  # noqa: F401


def main() -> None:
    _register()
    app()
