"""What the runner compares: named settings, each a factory for a pruner (or None = full model).

A setting is deliberately tiny: a name, a callable and the parameters to record. Any object with
`apply(model)` returning a context manager (with an optional `.stats: PruneStats`) fits, so every
method of `fastv.methods` slots in through `method_setting` without touching the runner.

Names are the keys of results on disk, so they are derived from the resolved settings only
(`pool keep=144`, `fastv k=2 keep=144`, `fastv k=2 r=0.5 random`): the same setting always gets
the same name, and a grid can grow between resumed runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastv.core.errors import FastVError
from fastv.methods import METHODS, make, method_class
from fastv.run import method_settings

FULL = "full"
DEFAULT_FASTV_KS = (1, 2, 3)  # `fastv eval`'s K grid for fastv/fastv_mean when --k is not given


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


def has_setting(method: str, name: str) -> bool:
    """Whether `method` (a METHODS key or a composition "a+b") has the setting `name` (k, scorer...)."""
    return name in method_settings(method)


def method_setting(
    method: str,
    keep: int | None = None,
    ratio: float | None = None,
    k: int | None = None,
    scorer: str | None = None,
    mode: str = "drop",
    positions: str | None = None,
) -> Setting:
    """One method at one budget. k and scorer are passed only to methods that have them (None: the
    method's default); positions (None: the method's paper) is named in the setting when given;
    the method validates everything it can without a model, now."""
    method_class(method)  # refuses unknown names and bad compositions
    kw: dict[str, Any] = {"keep": keep, "ratio": ratio, "mode": mode, "positions": positions}
    if has_setting(method, "k"):
        kw["k"] = k
    if has_setting(method, "scorer"):
        kw["scorer"] = scorer
    pruner = make(method, **kw)  # refuses bad budgets, k, scorers up front
    params: dict[str, Any] = {"method": method}
    if has_setting(method, "k"):
        params["k"] = pruner.k
    params.update({"keep": pruner.keep} if pruner.keep is not None else {"ratio": pruner.ratio})
    if has_setting(method, "scorer"):
        params["scorer"] = pruner.scorer
    params["mode"] = pruner.mode
    if positions is not None:
        params["positions"] = positions
    name = method + (f" k={params['k']}" if "k" in params else "") + " " + budget_text(params)
    name += "" if params.get("scorer", "last_token") == "last_token" else f" {params['scorer']}"
    name += "" if positions is None else f" pos={positions}"
    name += "" if mode == "drop" else f" {mode}"
    built = {**kw, **{key: params[key] for key in ("k", "scorer") if key in params}}
    return Setting(name, lambda: make(method, **built), params)


def budget_text(params: dict[str, Any]) -> str:
    """'keep=64' or 'r=0.5' (share dropped); '' for the full model."""
    if params.get("keep") is not None:
        return f"keep={params['keep']}"
    if params.get("ratio") is not None:
        return f"r={params['ratio']:g}"
    return ""


def fastv_setting(k: int, ratio: float, scorer: str = "last_token", mode: str = "drop") -> Setting:
    return method_setting("fastv", ratio=ratio, k=k, scorer=scorer, mode=mode)


def _unique(settings: list[Setting]) -> list[Setting]:
    names = [s.name for s in settings]
    if len(set(names)) != len(names):
        raise FastVError(
            "duplicate settings in the grid: " + ", ".join(sorted({n for n in names if names.count(n) > 1}))
        )
    return settings


def fastv_grid(
    ks: Iterable[int], ratios: Iterable[float], scorers: Iterable[str] = ("last_token",), mode: str = "drop"
) -> list[Setting]:
    """The full model first, then every (scorer, K, R) combination: the paper's trade-off grid."""
    settings = [full_model()]
    for scorer in scorers:
        for k in ks:
            for r in ratios:
                settings.append(fastv_setting(k, r, scorer, mode))
    return _unique(settings)


def method_grid(
    methods: Sequence[str],
    keeps: Sequence[int] = (),
    ratios: Sequence[float] = (),
    ks: Sequence[int] | None = None,
    scorers: Sequence[str] = ("last_token",),
    mode: str = "drop",
    positions: Sequence[str | None] = (None,),
) -> list[Setting]:
    """The full model, then per budget (keeps, then ratios) every method: the papers' table order.

    ks applies to the methods that have a k (fastv, fastv_mean: default 1,2,3; random, uniform:
    their own default, 0); scorers to those that have a scorer (fastv, fastv_mean); positions
    ("original", "contiguous"; None: each method's paper) to every method.
    """
    unknown = [m for m in methods if m not in METHODS and "+" not in m]
    if unknown:
        raise FastVError(f"unknown method {', '.join(map(repr, unknown))}: choose from {', '.join(METHODS)}")
    if not methods:
        raise FastVError("--method: give at least one method")
    budgets = [{"keep": n} for n in keeps] + [{"ratio": r} for r in ratios]
    if not budgets:
        raise FastVError("give a budget: --keep N[,N...] (visual tokens kept) or --ratio R[,R...] (share dropped)")
    settings = [full_model()]
    for budget in budgets:
        for method in methods:
            method_ks: list[int | None] = [None]
            if has_setting(method, "k"):
                method_ks = (
                    list(ks) if ks is not None else list(DEFAULT_FASTV_KS) if method.startswith("fastv") else [None]
                )
            for scorer in scorers if has_setting(method, "scorer") else [None]:
                for k in method_ks:
                    for pos in positions:
                        settings.append(method_setting(method, k=k, scorer=scorer, mode=mode, positions=pos, **budget))
    return _unique(settings)


def parse_list(text: str, cast: Callable[[str], Any], what: str) -> list[Any]:
    """'1,2,3' -> [1, 2, 3], with an error that names the option."""
    try:
        return [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError as err:
        kind = {int: "integers, e.g. 1,2,3", float: "numbers, e.g. 0.5,0.75"}.get(cast, "values")
        raise FastVError(f"--{what} {text!r}: expected comma-separated {kind}") from err
