"""What fastv's pruned model classes change in vLLM's multimodal processors, for every family.

Imported by vLLM (through the model classes registered in `fastv.serving.vllm`), never by fastv itself.
A family's processor inherits `PrunedImagesProcessor` before vLLM's own processor class; it then
- reads the settings of a request (`"mm_processor_kwargs": {"fastv": {...}}`) or the server's default,
  checked in the API server (`fastv.serving.settings.normalized`: a bad one is an HTTP 400);
- hides the `fastv` key from the Hugging Face processor, which would not know it;
- stores the settings with each image as a processed-data field (`FIELD`), so the engine process
  prunes each image with the settings that chose its placeholder count;
- gives each image the method's kept count of placeholder tokens, so the KV cache holds only those;
- for instruction-conditioned methods (cdpruner), reads the prompt's token ids after its last image in
  `apply` (the one public method that sees the prompt), adds them to the request's processor kwargs
  (vLLM hashes those into the image's processor-cache, encoder-cache and prefix-cache keys, so the
  same image under another question is encoded again) and to each image as a field (`INSTRUCTION`),
  which the model class embeds with its own embedding table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import torch
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.processing import PromptReplacement

from fastv.serving.pruning import adapter_for, kept_per_image, pre_lm_method
from fastv.serving.settings import (
    CONFIG_KEY,
    FIELD,
    INSTRUCTION,
    encode,
    instruction_ids,
    normalized,
    reads_instruction,
    server_settings,
)


def without_settings(mm_kwargs: Mapping[str, object]) -> dict[str, object]:
    """The kwargs without fastv's own (settings, instruction), which the Hugging Face processor would not know."""
    return {k: v for k, v in mm_kwargs.items() if k not in (CONFIG_KEY, INSTRUCTION)}


class PrunedImagesProcessor:
    """Mixin for a vLLM `BaseMultiModalProcessor` subclass (listed first among its bases).

    images_key: the Hugging Face processor's output with one entry per image (its count of images).
    """

    images_key = "pixel_values"

    def tokens_per_image(self) -> int | None:
        """Visual tokens of every image, where the family has one count (checked up front); else None."""
        return None

    def fastv_settings(self, mm_kwargs: Mapping[str, object]) -> dict[str, Any] | None:
        config = self.info.get_hf_config()  # type: ignore[attr-defined]
        if CONFIG_KEY in mm_kwargs:
            return normalized(mm_kwargs[CONFIG_KEY], config, self.tokens_per_image())
        return server_settings(config, self.tokens_per_image())

    def apply(self, inputs: Any, timing_ctx: Any) -> Any:
        """vLLM's processing, with the instruction's token ids in the kwargs where the method reads them."""
        kwargs = inputs.hf_processor_mm_kwargs
        if reads_instruction(self.fastv_settings(kwargs)):
            config = self.info.get_hf_config()  # type: ignore[attr-defined]
            image_tokens = adapter_for(SimpleNamespace(config=config)).visual_token_ids
            kwargs = {**kwargs, INSTRUCTION: instruction_ids(inputs.prompt, image_tokens)}
            inputs = dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs)
        return super().apply(inputs, timing_ctx)  # type: ignore[misc]

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> Any:
        settings = self.fastv_settings(hf_kwargs)
        out = super()._call_hf_processor(hf_data, without_settings(hf_kwargs))  # type: ignore[misc]
        if self.images_key in out:
            count = len(out[self.images_key])
            out[FIELD] = encode(settings)[None].expand(count, -1).clone()
            if INSTRUCTION in hf_kwargs:
                ids = torch.tensor(hf_kwargs[INSTRUCTION], dtype=torch.long).reshape(1, -1)
                out[INSTRUCTION] = ids.expand(count, -1).clone()
        return out

    def _get_mm_fields_config(self, hf_inputs: Any, hf_processor_mm_kwargs: Mapping[str, object]) -> Mapping:
        fields = dict(super()._get_mm_fields_config(hf_inputs, without_settings(hf_processor_mm_kwargs)))  # type: ignore[misc]
        fields[FIELD] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        if INSTRUCTION in hf_inputs:
            fields[INSTRUCTION] = MultiModalFieldConfig.batched("image")
        return fields

    def _get_prompt_updates(self, mm_items: Any, hf_processor_mm_kwargs: Mapping[str, object], out_mm_kwargs: Any):
        updates = super()._get_prompt_updates(mm_items, without_settings(hf_processor_mm_kwargs), out_mm_kwargs)  # type: ignore[misc]
        settings = self.fastv_settings(hf_processor_mm_kwargs)
        if settings is None:
            return updates
        method = pre_lm_method(settings)

        def pruned(update: PromptReplacement) -> PromptReplacement:
            def replacement(item_idx: int) -> list[int]:
                full = update.replacement(item_idx) if callable(update.replacement) else update.replacement
                return full[:1] * kept_per_image(method, len(full))  # the image's own placeholder token

            return PromptReplacement(modality=update.modality, target=update.target, replacement=replacement)

        return [pruned(u) if u.modality == "image" else u for u in updates]
