"""vLLM's LLaVA-1.5 with fastv's pre-LM methods: each image gets `keep` placeholders and features.

Imported by vLLM (lazily, through the registration in `fastv.serving.vllm`), never by fastv itself:
it subclasses vLLM's own classes and needs vllm installed (extra `fastv-lvlm[vllm]`).

What changes against vLLM's `LlavaForConditionalGeneration`, all through its public extension points:
- settings: the model config's `fastv` entry (config.json or `--hf-overrides '{"fastv": {...}}'`) is
  the server's default; a request may choose its own with `"mm_processor_kwargs": {"fastv": {...}}`
  (`{"fastv": {"method": "none"}}`: unpruned). The API server's processor validates them (a bad
  method or budget is an HTTP 400 naming the fix) and hands them to the engine with each image, as
  a field of the image's processed data, so they travel with vLLM's caches.
- the processor gives each image the method's kept count of placeholders, so the KV cache holds only
  those; `embed_multimodal` computes the full features and returns the rows kept (or merged) by
  fastv's own method code (`fastv.serving.pruning.ImagePruner`);
- original positions through `get_mrope_input_positions` (see the class docstring);
- VisionZip's CLS attention is observed on the vision tower's last built layer;
- the weight mapper also reads checkpoints whose CLIP tower has no `vision_model.` level
  (`vision_tower.embeddings.*`, as transformers 5 saves LLaVA), such as fastv's default model.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from fastv.core.errors import FastVError
from fastv.core.hf.attention_tap import query_attention
from fastv.methods.visionzip import KEY as VISIONZIP_KEY
from fastv.methods.visionzip import VisionZip, zip_image
from fastv.serving.pruning import (
    DATA_DEPENDENT,
    ImagePruner,
    adapter_for,
    check_budget,
    kept_per_image,
    pre_lm_method,
)
from fastv.serving.vllm import CONFIG_KEY

FIELD = "fastv_settings"  # per-image processed-data field: the settings as UTF-8 JSON bytes


def server_settings(hf_config: Any) -> dict[str, Any] | None:
    """The model config's fastv settings, e.g. {"method": "divprune", "keep": 48}; None: unpruned."""
    return _normalized(getattr(hf_config, CONFIG_KEY, None), hf_config)


def _normalized(settings: Any, hf_config: Any) -> dict[str, Any] | None:
    """Checked settings (None: unpruned). A FastVError is a ValueError: HTTP 400 in vLLM's API server."""
    if settings is None or settings == "none":
        return None
    if not isinstance(settings, Mapping):
        raise FastVError(
            f'fastv settings must be an object like {{"method": "divprune", "keep": 48}}, not {settings!r}'
        )
    if settings.get("method") in (None, "none") and set(settings) <= {"method"}:
        return None
    check_budget(pre_lm_method(settings), hf_config, _num_image_tokens(hf_config))
    return dict(settings)


def _num_image_tokens(hf_config: Any) -> int:
    """Visual tokens of one image in the full model (LLaVA-1.5: a square grid, plus CLS with 'full')."""
    vc = hf_config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n if hf_config.vision_feature_select_strategy == "default" else n + 1


def _encode(settings: dict[str, Any] | None) -> torch.Tensor:
    return torch.tensor(list(json.dumps(settings, sort_keys=True).encode()), dtype=torch.uint8)


def _decode(blob: torch.Tensor) -> str:
    return bytes(blob.tolist()).decode()


class FastvLlavaProcessingInfo(LlavaProcessingInfo):
    """vLLM's LLaVA processing info; `get_num_image_tokens` stays the full count (the upper bound)."""


class FastvLlavaMultiModalProcessor(LlavaMultiModalProcessor):
    """Each image: the kept count of placeholders, and the settings that chose it as a data field."""

    def _settings(self, mm_kwargs: Mapping[str, object]) -> dict[str, Any] | None:
        if CONFIG_KEY in mm_kwargs:
            return _normalized(mm_kwargs[CONFIG_KEY], self.info.get_hf_config())
        return server_settings(self.info.get_hf_config())

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> Any:
        settings = self._settings(hf_kwargs)
        out = super()._call_hf_processor(hf_data, {k: v for k, v in hf_kwargs.items() if k != CONFIG_KEY})
        if "pixel_values" in out:
            out[FIELD] = _encode(settings)[None].expand(len(out["pixel_values"]), -1).clone()
        return out

    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping:
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields[FIELD] = MultiModalFieldConfig.batched("image")
        return fields

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: Any):
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        settings = self._settings(hf_processor_mm_kwargs)
        if settings is None:
            return updates
        method = pre_lm_method(settings)
        token = self.info.get_hf_config().image_token_index

        def pruned(update: PromptReplacement) -> PromptReplacement:
            def replacement(item_idx: int) -> list[int]:
                full = update.replacement(item_idx) if callable(update.replacement) else update.replacement
                return [token] * kept_per_image(method, len(full))

            return PromptReplacement(modality=update.modality, target=update.target, replacement=replacement)

        return [pruned(u) if u.modality == "image" else u for u in updates]


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
        self._default = server_settings(self.config)
        self._pruners: dict[str, ImagePruner | None] = {}
        self._adapter = adapter_for(self)
        self._seen: dict[str, torch.Tensor] = {}
        self._observe = False
        self._observe_cls_attention()

    # ---- settings ---------------------------------------------------------------------------------
    def _pruner(self, blob: torch.Tensor | None) -> ImagePruner | None:
        key = json.dumps(self._default, sort_keys=True) if blob is None else _decode(blob)
        if key not in self._pruners:
            settings = json.loads(key)
            self._pruners[key] = None if settings is None else ImagePruner(pre_lm_method(settings), self._adapter)
        return self._pruners[key]

    # ---- features ---------------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> Any:
        blobs = kwargs.pop(FIELD, None)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        if image_input["type"] != "pixel_values":
            return self._process_image_input(image_input)
        count = len(image_input["pixel_values"])
        pruners = [self._pruner(None if blobs is None else blobs[i]) for i in range(count)]
        self._observe = any(p is not None and isinstance(p.method, VisionZip) for p in pruners)
        try:
            vision = self._process_image_pixels(image_input)  # (N, T, Hv) before the projector
        finally:
            self._observe = False
        projected = self.multi_modal_projector(vision)
        out = []
        for i, pruner in enumerate(pruners):
            if pruner is None:
                out.append(projected[i])
                continue
            extra = self._visionzip_extra(pruner, i, vision[i]) if isinstance(pruner.method, VisionZip) else None
            out.append(pruner.prune(projected[i], extra)[1])
        self._seen.clear()
        return tuple(out)

    def _observe_cls_attention(self) -> None:
        """VisionZip ranks by the CLS token's attention at the projected layer: record it (and the keys).

        vLLM builds the tower only up to `vision_feature_layer`, so that layer is the last one built.
        """
        attn = self.vision_tower.vision_model.encoder.layers[-1].self_attn

        def on_attention(module: torch.nn.Module, args: tuple) -> None:
            if not self._observe:
                return
            q, k = args[0], args[1]  # (N, T, heads * head_dim) each
            n, t = q.shape[:2]
            heads = attn.num_heads_per_partition
            q = q.reshape(n, t, heads, -1).transpose(1, 2)
            k = k.reshape(n, t, heads, -1).transpose(1, 2)
            probs = query_attention(module, q, k, None, {"scaling": attn.scale, "is_causal": False}, rows=0)
            self._seen["cls"] = probs.mean(1)[:, 0]  # (N, T), averaged over heads
            self._seen["keys"] = k.float().mean(1)  # (N, T, head_dim)

        attn.attn.register_forward_pre_hook(on_attention)

    def _visionzip_extra(self, pruner: ImagePruner, i: int, vision: torch.Tensor) -> dict[str, Any]:
        """VisionZip's block for one image, from the tower's [CLS] attention and keys seen on this pass.

        The server selects with original positions, where VisionZip leaves [CLS] out (`with_cls` False).
        """
        skip = 1 if self.config.vision_feature_select_strategy == "default" else 0
        dominant, contextual = pruner.method.split(vision.shape[0])
        if pruner.method.with_cls:
            raise FastVError("visionzip with [CLS] needs contiguous positions, which this server does not run")
        zipped = zip_image(
            self._seen["cls"][i, skip:],
            self._seen["keys"][i, skip:],
            vision,
            self.multi_modal_projector(vision),
            None,
            dominant,
            contextual,
            self.multi_modal_projector,
        )
        return {VISIONZIP_KEY: [zipped]}

    # ---- positions --------------------------------------------------------------------------------
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
        """(indices kept of the image's n tokens, n) for one image of a request, before its encoder step.

        Methods that choose by the features (divprune, visionzip) run the vision tower here too: the
        positions are needed when the request is scheduled, before its encoder step.
        """
        data = feature.data
        pruner = self._pruner(data[FIELD].data if FIELD in data else None)
        n = _num_image_tokens(self.config)
        if pruner is None:
            return torch.arange(n), n
        if pruner.method.name not in DATA_DEPENDENT:
            zeros = torch.zeros(n, self.config.text_config.hidden_size)  # the choice ignores the features
            return pruner.prune(zeros)[0].cpu(), n
        weight = next(self.vision_tower.parameters())
        pixels = data["pixel_values"].data[None].to(weight.device, weight.dtype)
        with torch.inference_mode():
            self._observe = isinstance(pruner.method, VisionZip)
            try:
                vision = self._process_image_pixels({"type": "pixel_values", "pixel_values": pixels})
            finally:
                self._observe = False
            projected = self.multi_modal_projector(vision)
            extra = self._visionzip_extra(pruner, 0, vision[0]) if isinstance(pruner.method, VisionZip) else None
            self._seen.clear()
            return pruner.prune(projected[0], extra)[0].cpu(), n
