"""The `fastv` command line: each verb lives in its own module and registers itself here."""

from __future__ import annotations

import typer

app = typer.Typer(help="FastV: prune visual tokens inside vision-language models.", no_args_is_help=True)


def _register() -> None:
    # One import per verb module; each module adds its command(s) to `app`.
    from fastv.cli import analyze, bench, demo, flops, generate, methods  # noqa: F401
    from fastv.cli import eval as _eval  # noqa: F401


def main() -> None:
    _register()
    app()
