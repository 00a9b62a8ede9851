"""`fastv methods`: the token-reduction methods, where they cut, what their budget means, which families."""

from __future__ import annotations

from rich.table import Table

from fastv.cli import app, make_console
from fastv.methods import ABOUT, COMPOSITION, METHODS


@app.command("methods")
def methods_cmd() -> None:
    """List the reduction methods (use a name with --method; FastV is the default)."""
    table = Table(title="Token-reduction methods (budget: --keep N visual tokens or --ratio R dropped)")
    for col in ("name", "follows", "cuts at", "budget", "families"):
        table.add_column(col)
    for name in METHODS:
        a = ABOUT[name]
        table.add_row(name, a.paper, a.where, a.budget, a.families)
    c = COMPOSITION
    table.add_row("A+B", c.paper, c.where, c.budget, c.families)
    make_console().print(table)
