"""vLLM's LLaVA-1.5 with a fastv pre-LM method: each image gets `keep` placeholders and features.

Imported by vLLM (lazily, through the registration in `fastv.serving.vllm`), never by fastv itself:
it subclasses vLLM's own classes and needs vllm installed (extra `fastv-lvlm[vllm]`).

What changes against vLLM's `LlavaForConditionalGeneration`, all through its public extension
points: the processing info reports `keep` tokens per image, so the prompt gets `keep` image
placeholders and the KV cache holds only those; `embed_multimodal` computes the full features and
returns the kept (or merged) rows chosen by fastv's method (`fastv.serving.pruning.ImagePruner`);
VisionZip's CLS attention is observed on the vision tower's last built layer. Settings come from
the model config's `fastv` entry (config.json or `--hf-overrides '{"fastv": {...}}'`); without one
the model runs unpruned. The weight mapper also accepts checkpoints whose CLIP tower has no
`vision_model.` level (`vision_tower.embeddings.*`, as transformers 5 writes LLaVA), such as
fastv's default model.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property
from typing import Any

import torch
from vllm.model_executor.models.interfaces import SupportsMRoPE
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.model_executor.models.utils import WeightsMapper
from vllm.multimodal import MULTIMODAL_REGISTRY

from fastv.attention_tap import query_attention
from fastv.methods.visionzip import KEY as VISIONZIP_KEY
from fastv.methods.visionzip import VisionZip, zip_image
from fastv.serving.pruning import DATA_DEPENDENT, ImagePruner, adapter_for, kept_per_image, pre_lm_method
from fastv.serving.vllm import CONFIG_KEY


def fastv_settings(hf_config: Any) -> dict[str, Any] | None:
    """The model config's fastv settings, e.g. {"method": "divprune", "keep": 48}; None: unpruned."""
    settings = getattr(hf_config, CONFIG_KEY, None)
    return dict(settings) if settings else None


class FastvLlavaProcessingInfo(LlavaProcessingInfo):
    """Image placeholders: the method's kept count per image (the KV cache holds only those)."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        n = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        settings = fastv_settings(self.get_hf_config())
        if settings is None:
            return n
        return kept_per_image(pre_lm_method(settings), n)


class FastvLlavaMultiModalProcessor(LlavaMultiModalProcessor):
    """vLLM's LLaVA processor; the placeholder count comes from `FastvLlavaProcessingInfo`."""


@MULTIMODAL_REGISTRY.register_processor(
    FastvLlavaMultiModalProcessor,
    info=FastvLlavaProcessingInfo,
    dummy_inputs=LlavaDummyInputsBuilder,
)
class FastvLlavaForConditionalGeneration(LlavaForConditionalGeneration, SupportsMRoPE):
    """LLaVA-1.5 whose images enter the language model pruned by a fastv pre-LM method.

    Positions: vLLM numbers a prompt's tokens 0..L-1, so kept image tokens would sit next to each
    other and the text after the image would move up by the dropped count. fastv keeps original
    positions (the RoPE angles the model was trained with), and so does this class when the text
    model's rope config carries a one-section M-RoPE (`mrope_section: [rotary_dim / 2, 0, 0]`, which
    `fastv.serving.vllm.hf_overrides` adds): vLLM then asks `get_mrope_input_positions` for every
    token's position, and all three rows carry the original one. Without it vLLM renumbers (and the
    answers are those of a model fed the shorter sequence; see docs/serving.md).
    """

    hf_to_vllm_mapper = LlavaForConditionalGeneration.hf_to_vllm_mapper | WeightsMapper(
        orig_to_new_prefix={
            # transformers 5 saves LLaVA's CLIP tower without its `vision_model.` level; applied after
            # the mapping above, so `model.vision_tower.embeddings.*` works too
            f"vision_tower.{part}.": f"vision_tower.vision_model.{part}."
            for part in ("embeddings", "pre_layrnorm", "encoder", "post_layernorm")
        }
    )

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        settings = fastv_settings(self.config)
        self._pruner = None if settings is None else ImagePruner(pre_lm_method(settings), adapter_for(self))
        self._seen: dict[str, torch.Tensor] = {}
        if self._pruner is not None and isinstance(self._pruner.method, VisionZip):
            self._observe_cls_attention()

    @cached_property
    def _cls_skip(self) -> int:
        return 1 if self.config.vision_feature_select_strategy == "default" else 0

    def _observe_cls_attention(self) -> None:
        """VisionZip ranks by the CLS token's attention at the projected layer: record it (and the keys).

        vLLM builds the tower only up to `vision_feature_layer`, so that layer is the last one built.
        """
        attn = self.vision_tower.vision_model.encoder.layers[-1].self_attn

        def on_attention(module: torch.nn.Module, args: tuple) -> None:
            q, k = args[0], args[1]  # (N, T, heads * head_dim) each
            n, t = q.shape[:2]
            heads = attn.num_heads_per_partition
            q = q.reshape(n, t, heads, -1).transpose(1, 2)
            k = k.reshape(n, t, heads, -1).transpose(1, 2)
            probs = query_attention(module, q, k, None, {"scaling": attn.scale, "is_causal": False}, rows=0)
            self._seen["cls"] = probs.mean(1)[:, 0]  # (N, T), averaged over heads
            self._seen["keys"] = k.float().mean(1)  # (N, T, head_dim)

        attn.attn.register_forward_pre_hook(on_attention)

    def _process_image_input(self, image_input: Any) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self._pruner is None or image_input["type"] != "pixel_values":
            return super()._process_image_input(image_input)
        vision = self._process_image_pixels(image_input)  # (N, T, Hv) before the projector
        projected = self.multi_modal_projector(vision)
        out = []
        for i in range(projected.shape[0]):
            extra = self._visionzip_extra(i, vision[i]) if isinstance(self._pruner.method, VisionZip) else None
            out.append(self._pruner.prune(projected[i], extra)[1])
        self._seen.clear()
        return tuple(out)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> tuple[torch.Tensor, int]:
        """Original positions: kept image tokens at their index in the full image, text shifted back."""
        length = len(input_tokens)
        shift = torch.zeros(length, dtype=torch.long)  # dropped tokens before each position
        kept_at: list[tuple[int, torch.Tensor]] = []
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            offset, k = feature.mm_position.offset, feature.mm_position.length
            kept, n = self._kept_indices(feature)
            if kept.numel() != k:
                raise RuntimeError(f"fastv: image at {offset} has {k} placeholders but {kept.numel()} kept tokens")
            kept_at.append((offset, kept))
            shift[offset + k :] += n - k
        positions = torch.arange(length) + shift
        for offset, kept in kept_at:
            positions[offset : offset + kept.numel()] = offset + shift[offset] + kept
        delta = int(shift[-1]) if length else 0
        return positions.expand(3, -1).clone(), delta

    def _kept_indices(self, feature: Any) -> tuple[torch.Tensor, int]:
        """(indices kept of the image's n tokens, n) for one image of a request, before its encoder step."""
        if self._pruner is None:
            n = self._num_image_tokens()
            return torch.arange(n), n
        if self._pruner.method.name not in DATA_DEPENDENT:
            n = self._num_image_tokens()
            zeros = torch.zeros(n, self.config.text_config.hidden_size)  # the choice ignores features
            return self._pruner.prune(zeros)[0].cpu(), n
        weight = next(self.vision_tower.parameters())
        pixels = feature.data["pixel_values"].data[None].to(weight.device, weight.dtype)
        with torch.inference_mode():
            vision = self._process_image_pixels({"type": "pixel_values", "pixel_values": pixels})
            n = vision.shape[1]
            projected = self.multi_modal_projector(vision)
            extra = self._visionzip_extra(0, vision[0]) if isinstance(self._pruner.method, VisionZip) else None
            self._seen.clear()
            return self._pruner.prune(projected[0], extra)[0].cpu(), n

    def _num_image_tokens(self) -> int:
        vc = self.config.vision_config
        n = (vc.image_size // vc.patch_size) ** 2
        return n if self.config.vision_feature_select_strategy == "default" else n + 1

    def _visionzip_extra(self, i: int, vision: torch.Tensor) -> dict[str, Any]:
        skip = self._cls_skip
        dominant, contextual = self._pruner.method.split(vision.shape[0])
        zipped = zip_image(
            self._seen["cls"][i, skip:],
            self._seen["keys"][i, skip:],
            vision,
            dominant,
            contextual,
            self.multi_modal_projector,
        )
        return {VISIONZIP_KEY: [zipped]}

