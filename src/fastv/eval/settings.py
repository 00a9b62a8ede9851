"""What the runner compares: named settings, each a factory for a pruner (or None = full model).

A setting is deliberately tiny: a name, a callable and the parameters to record. Any object with
`apply(model)` returning a context manager (with an optional `.stats: PruneStats`) fits, so other
token-reduction methods slot in as new factories without touching the runner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastv.engine import FastV
from fastv.errors import FastVError

FULL = "full"


class Pruner(Protocol):
    def apply(self, model: Any) -> Any: ...


@dataclass(frozen=True)
class Setting:
    name: str  # unique; results on disk are keyed by (setting name, sample id)
    make: Callable[[], Pruner | None] = field(compare=False)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def is_full(self) -> bool:
        return self.name == FULL


def full_model() -> Setting:
    """The unpruned reference every other setting is compared with (accuracy, FLOPs, agreement)."""
    return Setting(FULL, lambda: None, {"method": "full"})


def fastv_setting(k: int, ratio: float, scorer: str = "last_token", mode: str = "drop") -> Setting:
    FastV(k=k, ratio=ratio, scorer=scorer, mode=mode)  # validate now, not in the middle of a run
    tag = "" if scorer == "last_token" else f" {scorer}"
    name = f"fastv k={k} r={ratio:g}{tag}" + ("" if mode == "drop" else f" {mode}")
    params = {"method": "fastv", "k": k, "ratio": ratio, "scorer": scorer, "mode": mode}
    return Setting(name, lambda: FastV(k=k, ratio=ratio, scorer=scorer, mode=mode), params)


def fastv_grid(
    ks: Iterable[int], ratios: Iterable[float], scorers: Iterable[str] = ("last_token",), mode: str = "drop"
) -> list[Setting]:
    """The full model first, then every (scorer, K, R) combination: the paper's trade-off grid."""
    settings = [full_model()]
    for scorer in scorers:
        for k in ks:
            for r in ratios:
                settings.append(fastv_setting(k, r, scorer, mode))
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise FastVError(
            "duplicate settings in the grid: " + ", ".join(sorted({n for n in names if names.count(n) > 1}))
        )
    return settings


def parse_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    """'1,2,3' -> [1, 2, 3], with an error that names the option."""
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as err:
        raise FastVError(f"--{what} {text!r}: expected a comma-separated list") from err
