"""The `fastv` command line: each verb lives in its own module and registers itself here.

Every way a verb can fail ends the same: one line on stderr that names the problem and the fix,
exit code 2 (1 for a bug: an unexpected exception), and the traceback only with `--debug` (or
FASTV_DEBUG=1). The checks themselves live in `fastv.cli.validate` and run before any model loads.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Any

import typer
from rich.console import Console
from typer.core import TyperGroup

from fastv.core.errors import FastVError

try:  # typer >= 0.20 vendors click: its own exception types
    from typer.exceptions import TyperException as _OptionError
except ImportError:  # pragma: no cover - older typer on click
    from click import ClickException as _OptionError
try:
    import click

    _PASS: tuple[type[BaseException], ...] = (click.exceptions.Exit, click.exceptions.Abort)
except ImportError:  # pragma: no cover
    _PASS = ()
_PASS = (*_PASS, typer.Exit, typer.Abort, KeyboardInterrupt)

_state = {"debug": os.environ.get("FASTV_DEBUG", "") not in ("", "0")}


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def error_line(message: str) -> None:
    """The one line a refusal prints (stderr, never wrapped)."""
    typer.echo(f"error: {_one_line(message)}", err=True)


def warn(message: str) -> None:
    """A result that is correct but probably not what the user wanted: one line on stderr."""
    typer.echo(f"warning: {_one_line(message)}", err=True)


class _Group(TyperGroup):
    """Runs a verb and turns every failure into one line on stderr (see the module docstring)."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except _PASS:
            raise
        except _OptionError as err:  # bad option values caught by typer itself ('two' for an int)
            if _state["debug"]:
                traceback.print_exc()
            verb = f"fastv {ctx.invoked_subcommand}" if ctx.invoked_subcommand else "fastv"
            message = err.format_message() if hasattr(err, "format_message") else str(err)
            error_line(f"{message} (see `{verb} --help`)")
            raise typer.Exit(getattr(err, "exit_code", 2)) from err
        except (FastVError, OSError) as err:  # a refusal, or a file the OS would not give us
            if _state["debug"]:
                traceback.print_exc()
            error_line(str(err) or type(err).__name__)
            raise typer.Exit(2) from err
        except Exception as err:
            if _state["debug"]:
                traceback.print_exc()
            error_line(
                f"internal error ({type(err).__name__}: {err}); this is a bug in fastv: "
                "rerun with --debug for the traceback and report it"
            )
            raise typer.Exit(1) from err


app = typer.Typer(
    cls=_Group,
    help="FastV: prune visual tokens inside vision-language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="On an error, print the full traceback too."),
) -> None:
    _state["debug"] = debug or os.environ.get("FASTV_DEBUG", "") not in ("", "0")


def make_console() -> Console:
    """Rich console; when piped (no terminal width to read), wide enough for our tables."""
    return Console() if sys.stdout.isatty() else Console(width=160)


def _register() -> None:
    # One import per verb module; each module adds its command(s) to `app`.
    from fastv.cli import analyze, bench, demo, flops, generate, methods, serve  # noqa: F401
    from fastv.cli import eval as _eval  # noqa: F401


def _debug_first(argv: list[str]) -> list[str]:
    """`fastv generate ... --debug` works like `fastv --debug generate ...`."""
    if "--debug" in argv[1:]:
        return ["--debug", *[a for a in argv if a != "--debug"]]
    return argv


def main() -> None:
    _register()
    app(args=_debug_first(sys.argv[1:]))
