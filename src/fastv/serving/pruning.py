"""Run a pre-LM method on one image's projected features, without the engine's hooks.

Servers such as vLLM compute the visual features of an image once (its encoder step) and splice
them into the prompt at placeholder tokens; they never run transformers' decoder layers, so the
engine's hooks (`fastv.core.engine.PruneHandle`) cannot fire there. Methods that cut *before* the
language model (random and uniform at k=0, pool, divprune, visionzip, holov, cdpruner) only need what
such a server has at that point: the image's projected features, for visionzip and holov the vision
tower's [CLS] attention (`fastv.serving.tower_attention`), and for cdpruner the input embeddings of
the prompt's text after its last image (`INSTRUCTION_CONDITIONED`). `ImagePruner` runs the method's own `Stage`
(its `score`, fastv's `select` and the stage's `merge`) on them, exactly as the engine's cut at
layer 0 does, so a server keeps the same tokens and features as `method.apply(model)` does in
transformers. Methods that cut inside the language model (fastv, fastv_mean, pdrop, random or
uniform with k > 0) are refused: see docs/serving.md for why vLLM cannot run them yet.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from fastv.core.errors import FastVError, UnsupportedModelError
from fastv.core.hf.families import FAMILIES, Adapter
from fastv.core.selection import select
from fastv.methods import METHODS, Method, Stage, StageContext, VisionZip, make
from fastv.serving.tower_attention import reads_cls_attention

PRE_LM_METHODS = ("random", "uniform", "pool", "divprune", "visionzip", "holov", "cdpruner")
DATA_DEPENDENT = ("divprune", "visionzip", "holov", "cdpruner")
# methods that also rank by the prompt's text after its last image (their stage reads those rows' input embeddings)
INSTRUCTION_CONDITIONED = ("cdpruner",)  # the others choose positions without looking at the features


def pre_lm_method(settings: Mapping[str, Any]) -> Method:
    """The method a server config names, e.g. {"method": "divprune", "keep": 48}; refuse in-LLM cuts."""
    settings = dict(settings)
    name = settings.pop("method", None)
    if name is None:
        raise FastVError('the fastv settings need a "method", e.g. {"method": "divprune", "keep": 48}')
    if name not in METHODS:
        raise FastVError(f"unknown method {name!r}: choose one of {', '.join(PRE_LM_METHODS)}")
    if name not in PRE_LM_METHODS:
        raise FastVError(
            f"method {name!r} prunes inside the language model, which vLLM cannot run (every layer of a request "
            f"shares one sequence length and KV-cache layout; see docs/serving.md): choose one of "
            f"{', '.join(PRE_LM_METHODS)}"
        )
    if settings.get("k"):
        raise FastVError(f"{name} with k={settings['k']} cuts inside the language model; a server runs k=0 only")
    # The server keeps the kept tokens' original positions (see vllm_llava), so it selects with the
    # methods' original-position variant (VisionZip: no [CLS] in its block), whatever their paper's default.
    settings.setdefault("positions", "original")
    return make(name, **settings)


def adapter_for(model: Any) -> Adapter:
    """An `Adapter` for a model known only by its transformers config (`model.config`), as in vLLM.

    Pre-LM stages read the config (family, image grid, token ids), never the decoder layers.
    """
    config = model.config
    family = next((f for f in FAMILIES if config.model_type in f.model_types), None)
    if family is None:
        raise UnsupportedModelError(f"fastv's server pruning does not support model type {config.model_type!r}")
    token = getattr(config, "image_token_id", None)
    if token is None:
        token = config.image_token_index
    return Adapter(family, model, model, torch.nn.ModuleList(), (int(token),), "text_config")


def kept_per_image(method: Method, n: int) -> int:
    """Visual tokens a pre-LM method keeps of an n-token image: the placeholders its prompt gets."""
    k = method.keep_count(n)
    if not 0 <= k <= n:
        raise FastVError(f"{method.name}: cannot keep {k} of an image's {n} visual tokens; lower keep")
    return k


def check_budget(method: Method, config: Any, n: int | None) -> int | None:
    """Refuse up front what the method would refuse on an n-token image of a model with this config.

    Servers call it where a request arrives (vLLM's API server), so that a bad budget or a method the
    family cannot run is an HTTP error there instead of a failure inside the engine. n: visual tokens
    per image where every image has that many (LLaVA-1.5); None where images differ (Qwen2.5-VL: the
    count is checked per image, `kept_per_image`). Returns the tokens kept per image (None: unknown).
    """
    k = None if n is None else kept_per_image(method, n)
    if reads_cls_attention(method) and config.model_type == "llava":
        # their stages look at the vision tower, which an API server does not have
        if n is not None and isinstance(method, VisionZip):
            method.split(n)
    else:
        # grid methods check rows x cols here; methods a family cannot run refuse it here
        method.stages(adapter_for(SimpleNamespace(config=config)))
    return k


@dataclass
class ImagePruner:
    """One pre-LM method bound to one model: `prune(features)` -> (kept indices, kept features)."""

    method: Method
    adapter: Adapter
    stage: Stage = field(init=False)

    def __post_init__(self) -> None:
        stages = self.method.stages(self.adapter)
        if len(stages) != 1 or stages[0].layer != 0:
            raise FastVError(f"{self.method.name} does not cut once before the language model; a server cannot run it")
        self.stage = stages[0]

    def prune(
        self, features: torch.Tensor, extra: dict[str, Any] | None = None, text: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """features (n, H), the projected visual features of one image -> (kept indices (k,), features (k, H)).

        Indices are into the image's n tokens, sorted; for merging methods (pool, visionzip) the
        features are the merged ones. `extra` carries what a method's observers saw (visionzip, holov:
        the vision tower's [CLS] attention, `fastv.serving.tower_attention.tower_extra`), as
        `StageContext.extra`. text (m, H): the input embeddings of the prompt's text after its last
        image, for instruction-conditioned methods (cdpruner); the stage sees them as the rows after
        the image, as the engine does at layer 0.
        """
        n = features.shape[0]
        text = features[:0] if text is None else text.to(features.dtype)
        length = n + text.shape[0]
        ids = torch.full((1, length), -1, device=features.device)  # text rows: no token the stage looks up
        ids[0, :n] = self.adapter.visual_token_ids[0]
        visual = torch.zeros(1, length, dtype=torch.bool, device=features.device)
        visual[0, :n] = True
        rows = torch.arange(length, device=features.device)[None]
        generator = torch.Generator().manual_seed(self.method.seed)  # the engine seeds stage 0 the same way
        hidden = torch.cat([features, text])[None]
        ctx = StageContext(ids, visual, visual.clone(), hidden, rows, generator, self.adapter, extra=extra or {})
        scores = self.stage.score(ctx)
        keep = self.stage.keep
        if isinstance(scores, tuple):
            scores, keep = scores
        sel = select(scores, visual, keep, None, rows)
        index = sel.kept_visual[0]
        if self.stage.merge is not None:
            return index, self.stage.merge(ctx, sel)[0][: index.numel()]  # the image's rows come first
        return index, features[index]
