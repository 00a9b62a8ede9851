"""HoliTom's merges on plain tensors, transcribed from the official code (see `fastv.methods.holitom`).

Temporal segmentation (`segments`, the official `select_static_windows` DP), the merge of one video
before the language model (`compress_video`: static cells averaged over a segment and clustered by
DPC-kNN, dynamic cells by received attention) and the inner-LLM halving merge (`merge_halving`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fastv.methods.clustering import density_peaks


def adjacent_similarity(frames: torch.Tensor) -> torch.Tensor:
    """(F, P, H) -> (F - 1, P): cosine similarity of each cell's token with the next frame's."""
    x = torch.nn.functional.normalize(frames.float(), dim=-1)
    return torch.nn.functional.cosine_similarity(x[:-1], x[1:], dim=-1)


def segments(similarity: torch.Tensor, tau: float, max_window: int) -> tuple[list[tuple[int, int]], float]:
    """The DP segmentation ([(start, end)] inclusive, in order) and the tokens it merges away.

    Merging the cells similar across frames s..e saves (their count) x (e - s) tokens; the DP
    maximises the sum over segments of at most `max_window` frames (ties: the shorter segment).
    """
    frames = similarity.shape[0] + 1
    similar = similarity > tau  # (F - 1, P)
    saved = torch.zeros(frames, frames)
    for s in range(frames - 1):
        run = torch.cumprod(similar[s:].long(), dim=0).sum(-1).float().cpu()  # cells similar over s..s+1+j
        saved[s, s + 1 :] = run * torch.arange(1, frames - s)
    best = [0.0] * frames
    start = [0] * frames
    for i in range(frames):
        value, begin = (best[i - 1] if i else 0.0), i
        for size in range(2, min(i + 1, max_window) + 1):
            j = i - size
            v = (best[j] if j >= 0 else 0.0) + float(saved[j + 1, i])
            if v > value:
                value, begin = v, j + 1
        best[i], start[i] = value, begin
    out, i = [], frames - 1
    while i >= 0:
        out.append((start[i], i))
        i = start[i] - 1
    return out[::-1], best[-1]


def merge_clusters(x: torch.Tensor, centres: torch.Tensor, dist: torch.Tensor, beta: float) -> torch.Tensor:
    """Each centre: beta * itself + (1 - beta) * the mean of the others nearest to it (itself if none)."""
    x = x.float()
    others = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    others[centres] = False
    nearest = dist[others][:, centres].argmin(-1)
    sums = torch.zeros(centres.numel(), x.shape[1], device=x.device).index_add(0, nearest, x[others])
    counts = torch.zeros(centres.numel(), device=x.device).index_add(
        0, nearest, torch.ones_like(nearest, dtype=x.dtype)
    )
    merged = beta * x[centres] + (1 - beta) * sums / counts.clamp(min=1)[:, None]
    return torch.where(counts[:, None] > 0, merged, x[centres])


def fit(counts: list[int], caps: list[int], target: int) -> list[int]:
    """Counts moved one token at a time until they sum to `target` (or every part is full).

    Over budget: one each from the largest parts (ties: the earlier); under: one each to the parts
    with most room. Only the rounding of the official per-part counts is corrected.
    """
    counts = list(counts)
    diff = target - sum(counts)
    while diff < 0:
        for i in sorted(range(len(counts)), key=lambda i: -counts[i]):
            if diff == 0 or counts[i] == 0:
                break
            counts[i] -= 1
            diff += 1
    while diff > 0:
        room = sorted((i for i in range(len(counts)) if counts[i] < caps[i]), key=lambda i: counts[i] - caps[i])
        if not room:
            break
        for i in room[:diff]:
            counts[i] += 1
        diff -= len(room[:diff])
    return counts


@dataclass
class Compressed:
    """One video's tokens in the official order: anchor frame and cell of each, and its features."""

    frame: torch.Tensor  # (k,)
    cell: torch.Tensor  # (k,)
    features: torch.Tensor  # (k, H) float32


def compress_video(
    frames: torch.Tensor,
    attention: torch.Tensor,
    keep: int,
    tau: float,
    beta: float,
    knn: int,
    max_window: int,
    generator: torch.Generator,
) -> Compressed:
    """Temporal then spatial merging of one video, frames (F, P, H) and attention (F, P), to `keep` tokens."""
    f, p, _ = frames.shape
    total = f * p
    sim = adjacent_similarity(frames) if f > 1 else frames.new_zeros(0, p)
    segs, reduced = segments(sim, tau, max_window)
    ratio = min((keep / total) / ((total - reduced) / total), 1.0)
    parts: list[tuple[str, int, torch.Tensor]] = []  # ("static" | "dynamic", frame, cells)
    for s, e in segs:
        static = (sim[s:e] > tau).all(0) if e > s else torch.zeros(p, dtype=torch.bool, device=frames.device)
        cells = torch.arange(p, device=frames.device)
        if e > s:
            parts.append(("static", s, cells[static]))
        parts.extend(("dynamic", t, cells[~static]) for t in range(s, e + 1))
    caps = [int(c.numel()) for _, _, c in parts]
    # the official rounding: round() per segment's static cells, ceil() per dynamic frame
    counts = [
        round(n * ratio) if kind == "static" else math.ceil(n * ratio)
        for (kind, _, _), n in zip(parts, caps, strict=True)
    ]
    counts = fit([min(c, n) for c, n in zip(counts, caps, strict=True)], caps, min(keep, sum(caps)))
    frame_ids, cell_ids, feats = [], [], []
    seg_of = {s: e for s, e in segs}
    for (kind, t, cells), n in zip(parts, counts, strict=True):
        if n == 0:
            continue
        if kind == "static":
            mean = frames[t : seg_of[t] + 1, cells].float().mean(0)  # (S, H)
            noise = torch.rand(mean.shape[0], generator=generator).to(mean.device) * 1e-6
            centres, dist = density_peaks(mean, n, min(knn, n), noise)
            centres = centres.sort().values
            feats.append(merge_clusters(mean, centres, dist, beta))
            chosen = cells[centres]
        else:
            chosen = cells[attention[t, cells].float().topk(n).indices].sort().values
            feats.append(frames[t, chosen].float())
        frame_ids.append(torch.full_like(chosen, t))
        cell_ids.append(chosen)
    if not feats:
        empty = torch.zeros(0, dtype=torch.long, device=frames.device)
        return Compressed(empty, empty, frames.new_zeros(0, frames.shape[-1]).float())
    return Compressed(torch.cat(frame_ids), torch.cat(cell_ids), torch.cat(feats))


def merge_halving(hidden: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """The inner-LLM merge: rows (n, H), `kept` indices in the official rank order -> new kept rows.

    Each non-kept row (in order) is folded into the most cosine-similar kept row: row = (row + it) / 2.
    """
    x = hidden.float()
    mask = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    mask[kept] = False
    rest = mask.nonzero().squeeze(1)
    out = x[kept].clone()
    if rest.numel() == 0:
        return out
    sim = torch.nn.functional.normalize(x[rest], dim=-1) @ torch.nn.functional.normalize(x[kept], dim=-1).T
    target = sim.argmax(-1)
    # Row j's m merges, in order, give it weight 2^-m and its i-th merged token 2^-(m - i + 1).
    m = torch.zeros(kept.numel(), dtype=torch.long, device=x.device).index_add(0, target, torch.ones_like(target))
    grouped, perm = target.sort(stable=True)
    order = torch.empty_like(target)  # 1-based rank of each merge among its target's, in sequence order
    order[perm] = torch.arange(1, target.numel() + 1, device=x.device) - torch.searchsorted(grouped, grouped)
    weights = torch.pow(0.5, (m[target] - order + 1).double()).float()
    out = out * torch.pow(0.5, m.double()).float()[:, None]
    return out.index_add(0, target, x[rest] * weights[:, None])
