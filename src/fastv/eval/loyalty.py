"""Does the pruned model behave like the full one? The first generated token's distribution, compared.

Accuracy can stay flat while answers change; a user who validated the full model wants to know how
often the pruned one says the same thing. The runner keeps the full model's first-token log-probs
(whole vocabulary) in memory while a sample's settings run and stores, per record, the exact
KL(full || setting) in nats and whether the top-1 tokens agree (top-5 log-probs on disk would only
bound the KL).
"""

from __future__ import annotations

import torch

KL_DIGITS = 6  # nats; rounded so sharded and single-process runs summarise identically


def kl_divergence(full: torch.Tensor, other: torch.Tensor) -> float:
    """KL(full || other) of two log-prob vectors over the same vocabulary, in nats (float64, >= 0)."""
    p, q = full.double(), other.double()
    terms = torch.where(torch.isneginf(p), torch.zeros_like(p), p.exp() * (p - q))  # 0 log 0 = 0
    kl = float(terms.sum())
    return round(max(kl, 0.0), KL_DIGITS)  # tiny negative values are rounding noise


def loyalty(full: torch.Tensor, other: torch.Tensor) -> dict[str, float | bool]:
    """The per-record fields: kl_first_token and top1_agree."""
    return {"kl_first_token": kl_divergence(full, other), "top1_agree": bool(full.argmax() == other.argmax())}
