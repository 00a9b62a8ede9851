"""HoliTom (Shao et al., NeurIPS 2025, arXiv 2505.21334): holistic token merging for video LLMs.

Video frames repeat each other; pruning each frame alone (or a short window) misses redundancy
that spans the whole clip. HoliTom merges in three scopes (paper Sec. 3, Fig. 2):

1. Temporal merging (Sec. 3.2, Eqs. 2-5): adjacent frames' tokens at the same grid cell are
   compared (cosine similarity of the projected, pooled features). The video is cut into segments
   by dynamic programming so that the number of tokens that stay similar (> tau) across a whole
   segment, times the frames they would save, is as large as possible over the clip ("global
   redundancy-aware segmentation"). In each segment, a cell similar across all of it is *static*:
   its tokens become one token, the mean over the segment's frames, placed in the segment's first
   frame. The other cells are *dynamic* and stay per frame.
2. Spatial merging (Sec. 3.3): the share kept is raised to r' = min(r T / (T - R), 1) for the
   T - R tokens left after step 1 (T tokens, R merged away), so the video keeps about r T in all.
   Each dynamic frame keeps its ceil(D r') tokens that receive most attention in the vision tower;
   each segment's static tokens are clustered by DPC-kNN into round(S r') clusters, and a cluster
   becomes  beta * its centre + (1 - beta) * the mean of its other members.
3. Inner-LLM merging (Sec. 3.4): at layer k, the last prompt token's attention (head mean, from
   layer k - 1) keeps round(N (1 - r_m)) of the video's N tokens; every other token is merged into
   the kept token whose hidden state is most cosine-similar.

We follow the official code (cokeshao/HoliTom: `holitom/llava_arch.py`
`prepare_inputs_labels_for_multimodal`, `select_static_windows`, `get_static_dynamic_features`,
`holitom`, `merge_tokens_by_attention_density`, `merge_tokens_by_density`, `cluster_dpc_knn`,
`merge_tokens_by_clustering`; `holitom/modeling_qwen2.py` `Qwen2Model_holitom.forward`) with its
defaults and scripts (`scripts/eval_ov-7b_holitom.sh`: T=0.80, HOLITOM_k=18, HOLITOM_r=0.5; BETA=0.6,
K=7, D=0, MAX_WINDOW_SIZE=1024):

- Similarity and features are the projector's output after LLaVA-OneVision's 2x2 bilinear pooling
  (the language model's input rows); attention is the projected vision layer's, averaged over
  heads and over all query rows (`attn_weights.mean(dim=1).mean(dim=1)`), pooled like the features
  (`fastv.core.received_attention`; SigLIP has no [CLS] to read).
- Segmentation: `select_static_windows`' DP; ties keep the shorter segment (strict >).
- Static tokens: a plain mean over the segment's frames (each frame weighs 1); a cluster's token is
  the beta form above (the code's default path: `NO_BETA` unset); members join the nearest centre
  by the DPC distance (Euclidean / sqrt(dim)); DPC-kNN uses k = min(K, clusters) neighbours and
  ranks centres by density x distance-to-denser, density tie-broken by noise of scale 1e-6 (drawn
  from fastv's seeded generator instead of the global one).
- Dynamic tokens: D=0, the code's default, so all of a dynamic frame's budget goes to its most
  attended tokens (the code's D > 0 branch, DPC-kNN "contextual" tokens, fails on a shape error
  in `merge_tokens_by_attention_density`, so it is not offered).
- Order: per segment, its static clusters (centre raster order), then each frame's dynamic tokens
  (raster order); the video's newline token last (LLaVA-OneVision's `one_token` layout).
- Inner merge: non-kept tokens, in sequence order, each set the kept token they resemble most to
  (it + them) / 2 in turn, as the code's loop does (not a size-weighted mean: a later token weighs
  more); kept tokens keep their positions (`position_ids = keep_indexs`): positions="original" for
  this stage whatever the outer stage uses.
- Positions before the LM: the code rebuilds the sequence, so its positions are contiguous (our
  default). positions="original" is fastv's variant: each token at its anchor (a static cluster at
  its centre's cell in the segment's first frame, a dynamic token at its own).

Budget (fastv's convention): `keep` = visual tokens per video entering the language model, the
newline token included; the official RETAIN_RATIO r maps to keep = round(r x frames x 196) + 1 on
LLaVA-OneVision-7B (32 frames, r = 0.10: keep 628). The inner merge then leaves round(keep / 2)
from layer k on (k = 18 of 28, scaled to other depths as round(18 L / 28)). Differences from the
code, for an exact budget: its per-part rounding (ceil per dynamic frame) overshoots r T by up to
a token a frame; we then take one token at a time from the largest parts (or give one to the parts
with most room when short) until the video holds exactly `keep` (fewer only when temporal merging
alone already leaves fewer). Images in the same prompt pass untouched, as in the code.

The merges themselves, on plain tensors: `fastv.methods.holitom_merging`.

Supported: LLaVA-OneVision videos (the paper's model; the HF layout: frames of pooled tokens, then
one newline). Other families and prompts without a video are refused. Drop mode only (it merges).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from fastv.core.errors import FastVError, UnsupportedModelError
from fastv.core.hf.families import Adapter
from fastv.core.received_attention import projected_layer, record_received_attention
from fastv.core.stages import Stage, StageContext
from fastv.methods.base import Method
from fastv.methods.fastv import last_token_attention
from fastv.methods.grid import ImageRun, image_runs
from fastv.methods.holitom_merging import compress_video, merge_halving
from fastv.methods.per_image import Choice, PerImageStage, alive_features

if TYPE_CHECKING:
    from fastv.core.engine import PruneHandle

KEY = "holitom_attention"


# ---- the method on the engine --------------------------------------------------------------------
@dataclass(kw_only=True)
class HoliTom(Method):
    """Merge each video to `keep` tokens before the LM (temporal + spatial), then halve them at layer k.

    tau: similarity above which a cell is static across frames (official T: 0.80; 0.65 at r = 0.10).
    beta: weight of a static cluster's centre. knn: DPC-kNN neighbours (K). max_window: frames per
    segment. inner: the inner-LLM merge (False: the paper's "HoliTom (w/o M)"); layer: its layer k
    (default round(18 L / 28)); merge_ratio: share of the video's tokens merged away there (HOLITOM_r).
    """

    tau: float = 0.8
    beta: float = 0.6
    knn: int = 7
    max_window: int = 1024
    inner: bool = True
    layer: int | None = None
    merge_ratio: float = 0.5

    name = "holitom"
    default_positions = "contiguous"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.beta <= 1.0:
            raise FastVError(f"holitom: beta={self.beta} must be in [0, 1]")
        if self.knn < 1 or self.max_window < 1:
            raise FastVError(f"holitom: knn={self.knn} and max_window={self.max_window} must be >= 1")
        if not 0.0 <= self.merge_ratio < 1.0:
            raise FastVError(f"holitom: merge_ratio={self.merge_ratio} must be in [0, 1)")
        if self.layer is not None and self.layer < 1:
            raise FastVError(f"holitom: layer={self.layer} must be >= 1 (the inner merge runs inside the LM)")

    def cut(self, num_layers: int) -> int:
        """The inner merge's layer k: `layer`, or the official 18 of 28 scaled to the model's depth."""
        k = round(18 * num_layers / 28) if self.layer is None else self.layer
        if not 1 <= k < num_layers:
            raise FastVError(f"holitom: layer={k} is outside 1..{num_layers - 1}")
        return k

    def inner_keep(self, n: int) -> int:
        return round(n * (1 - self.merge_ratio))

    def visual_tokens_per_layer(self, num_layers: int, n: int) -> list[int]:
        keep = self.keep_count(n)
        if not 0 <= keep <= n:
            raise FastVError(f"{self.name}: cannot keep {keep} of {n} visual tokens")
        if not self.inner:
            return [keep] * num_layers
        k = self.cut(num_layers)
        return [keep] * k + [self.inner_keep(keep)] * (num_layers - k)

    def stages(self, adapter: Adapter) -> list[Stage]:
        if adapter.model.config.model_type != "llava_onevision":
            raise UnsupportedModelError(
                f"holitom merges video frames; fastv supports it on LLaVA-OneVision videos (the paper's model), "
                f"not {adapter.family.name}: it needs frames of pooled SigLIP tokens and their vision attention"
            )
        projected_layer(adapter, self.name)
        out = [PerImageStage(self.name, self.outer).stage(0, merging=True)]
        if self.inner:
            out.append(PerImageStage(self.name, self.merge_inner).stage(self.cut(adapter.num_layers), "last", True))
        return out

    def build(self, adapter: Adapter) -> list[Stage]:
        out = super().build(adapter)
        for stage in out[1:]:
            stage.positions = "original"  # the official inner merge keeps its tokens' positions
        return out

    def prepare(self, handle: PruneHandle) -> list[Callable[[], None]]:
        return [record_received_attention(handle, KEY, self.name)]

    # -- stage 1: before the language model
    def outer(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        videos = _video_runs(ctx)
        if not videos:
            raise FastVError(
                "holitom compresses videos, and no prompt of this batch holds one: pass a video "
                "(pixel_values_videos and its video tokens), or use an image method (e.g. visionzip, divprune)"
            )
        keys = [(v.sample, v.index) for v in videos]
        if (run.sample, run.index) not in keys:
            return Choice(alive)  # images pass untouched, as in the official code
        if alive.numel() != run.size:
            raise FastVError("holitom cuts before the language model: it must be the first stage")
        attention = self._frames_attention(ctx, len(videos))
        frames = attention.shape[0] // len(videos)
        p = attention.shape[1]
        newline = run.size - frames * p
        if newline not in (0, 1):
            raise FastVError(
                f"holitom: video {keys.index((run.sample, run.index))} has {run.size} tokens, not {frames} frames of {p} (+1 newline); "
                "give each video its own run of video tokens"
            )
        number = keys.index((run.sample, run.index))
        hidden = alive_features(ctx, run, alive)
        keep = self.keep_count(run.size)
        if not 0 <= keep <= run.size:
            raise FastVError(f"holitom: cannot keep {keep} of the video's {run.size} tokens")
        body = keep - newline if keep else 0
        z = compress_video(
            hidden[: frames * p].view(frames, p, -1),
            attention[number * frames : (number + 1) * frames].to(hidden.device),
            body,
            self.tau,
            self.beta,
            self.knn,
            self.max_window,
            ctx.generator,
        )
        anchors = run.positions[(z.frame * p + z.cell).to(run.positions.device)]
        feats = z.features
        if newline and keep:
            anchors = torch.cat([anchors, run.positions[-1:]])
            feats = torch.cat([feats, hidden[-1:].float()])
        kept, order = anchors.sort()
        if self.position_mode == "contiguous":
            return Choice(kept, kept, feats)  # the official sequence, in order, fills the kept rows
        return Choice(kept, kept, feats[order])

    def _frames_attention(self, ctx: StageContext, videos: int) -> torch.Tensor:
        seen = ctx.extra.get(KEY) or []
        if not ctx.extra.get(KEY + ".video") or not seen:
            raise FastVError("holitom: the vision tower did not encode a video in this call; pass pixel_values_videos")
        raw = seen[-1]  # LLaVA-OneVision encodes images first, then the videos
        side = math.isqrt(raw.shape[1])
        if side * side != raw.shape[1] or raw.shape[0] % videos:
            raise FastVError(
                f"holitom: the vision tower's video call saw {raw.shape[0]} frames of {raw.shape[1]} tokens, "
                f"which are not square grids for {videos} video(s)"
            )
        pool = getattr(ctx.adapter.model, "model", ctx.adapter.model).apply_pooling  # the features' own pooling
        return pool(raw[..., None]).squeeze(-1)

    # -- stage 2: inside the language model
    def merge_inner(self, ctx: StageContext, run: ImageRun, alive: torch.Tensor) -> Choice:
        if (run.sample, run.index) not in [(v.sample, v.index) for v in _video_runs(ctx)] or not alive.numel():
            return Choice(alive)
        scores = last_token_attention(ctx)[run.sample, alive]
        ranked = scores.float().topk(self.inner_keep(alive.numel())).indices
        merged = merge_halving(alive_features(ctx, run, alive), ranked)
        kept, order = alive[ranked].sort()
        return Choice(kept, kept, merged[order])


def _video_runs(ctx: StageContext) -> list[ImageRun]:
    """The batch's video runs (sample-major), the order in which the vision tower encoded the videos."""
    video = getattr(ctx.adapter.model.config, "video_token_id", None)
    return [
        run
        for runs in image_runs(ctx.input_ids, ctx.visual, ctx.adapter)
        for run in runs
        if int(ctx.input_ids[run.sample, run.positions[0]]) == video
    ]
