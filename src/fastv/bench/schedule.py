"""The benchmark's call order: every pruned run between two unpatched runs, and its time read against them.

Kept apart from the timing so the bookkeeping that cancels a shared machine's drift is plain and testable.
"""

from __future__ import annotations

Setting = tuple  # ("full",), (k, ratio) or (method, "keep"|"ratio", value)
FULL: Setting = ("full",)


def interleaved_plan(settings: list[Setting], rounds: int) -> list[Setting]:
    """Call order: each round visits every setting once (rotated), each between two unpatched runs.

    Round r is full, s[r], full, s[r+1], ..., full, and the next round starts with its own full run,
    so every pruned run has an unpatched neighbour on each side measured moments apart.
    """
    plan: list[Setting] = []
    n = len(settings)
    for rnd in range(rounds):
        shift = rnd % n if n else 0
        for s in settings[shift:] + settings[:shift]:
            plan += [FULL, s]
        plan.append(FULL)
    return plan


def neighbour_shares(sequence: list[tuple[Setting, float]]) -> dict[Setting, list[float]]:
    """Each pruned run's measurement over the mean of the unpatched runs right before and after it."""
    shares: dict[Setting, list[float]] = {}
    for i, (s, value) in enumerate(sequence):
        if s == FULL or i == 0 or i + 1 >= len(sequence):
            continue
        (before, a), (after, b) = sequence[i - 1], sequence[i + 1]
        if before == FULL and after == FULL and a + b > 0:
            shares.setdefault(s, []).append(value / ((a + b) / 2))
    return shares
