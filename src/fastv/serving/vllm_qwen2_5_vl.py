"""vLLM's Qwen2.5-VL with fastv's pre-LM methods: each image keeps the method's tokens at their own positions.

Imported by vLLM (lazily, through the registration in `fastv.serving.vllm`), never by fastv itself:
it subclasses vLLM's own classes and needs vllm installed (extra `fastv-lvlm[vllm]`).

What changes against vLLM's `Qwen2_5_VLForConditionalGeneration`, all through its public extension points:
- settings, per-image settings field and placeholder counts: as for LLaVA (`fastv.serving.settings`,
  `fastv.serving.vllm_processing`); an image of n merged tokens gets the method's kept count of
  `<|image_pad|>` placeholders (n differs from image to image, so budgets are checked per image);
- `embed_multimodal` returns, per image, the rows fastv's method keeps of the merged vision features
  (`fastv.serving.pruning.ImagePruner`, as the engine cuts before layer 0 in transformers);
- `get_mrope_input_positions` gives the shorter prompt its ORIGINAL M-RoPE positions: each kept token
  its own (t, h, w) cell, the text after an image resumed past the image's full grid
  (`fastv.serving.mrope`). vLLM asks for them when a request is scheduled, before its encoder step,
  so methods that choose by the features (divprune, cdpruner) run the vision tower on the image there too, and
  `embed_multimodal` encodes such images one at a time through the same function (`_encode_alone`), so
  both choices see the same floats.
  vLLM's own pruning protocol (`SupportsMultiModalPruning.recompute_mrope_positions`, used by its video
  pruning EVS) would carry positions with the embeddings instead, but vLLM 0.32's CPU model runner never
  switches it on (its `load_model` skips that flag), and it needs `--video-pruning-rate`; see docs/serving.md.

Methods: random, divprune, cdpruner (they choose among an image's tokens without a grid or a [CLS]
token; cdpruner also reads the prompt's text after its last image, `fastv.serving.vllm_processing`).
uniform and pool need a known token grid, which fastv's grid methods do not read from Qwen's
per-image (t, h, w) grids yet, and visionzip and holov need a CLIP [CLS] attention that Qwen's tower lacks:
fastv refuses them for Qwen2.5-VL in transformers, and the server answers them with HTTP 400.
Videos are refused (HTTP 400): fastv's class prunes images only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from fastv.core.errors import FastVError
from fastv.serving.mrope import prompt_positions
from fastv.serving.pruning import DATA_DEPENDENT
from fastv.serving.settings import FIELD, INSTRUCTION, Encoded, Pruners, field
from fastv.serving.vllm_processing import PrunedImagesProcessor

NO_VIDEOS = (
    "fastv's Qwen2.5-VL server prunes images and takes no videos: send images, or serve videos with vLLM's "
    "own Qwen2_5_VLForConditionalGeneration"
)


class FastvQwen2_5_VLMultiModalProcessor(PrunedImagesProcessor, Qwen2_5_VLMultiModalProcessor):
    """Each image: the kept count of `<|image_pad|>` placeholders and the settings that chose it."""

    images_key = "image_grid_thw"

    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> Any:
        if hf_data.get("videos"):
            raise FastVError(NO_VIDEOS)
        return super()._call_hf_processor(hf_data, hf_kwargs)


@MULTIMODAL_REGISTRY.register_processor(
    FastvQwen2_5_VLMultiModalProcessor,
    info=Qwen2_5_VLProcessingInfo,
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class FastvQwen2_5_VLForConditionalGeneration(Qwen2_5_VLForConditionalGeneration):
    """Qwen2.5-VL whose images enter the language model pruned by a fastv pre-LM method, at original positions."""

    def __init__(self, *, vllm_config: Any, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        if self.is_multimodal_pruning_enabled:
            raise FastVError(f"--video-pruning-rate: {NO_VIDEOS}")
        self._pruners = Pruners(self)

    def _merged_grid(self, grid_thw: list[int]) -> tuple[int, int]:
        t, h, w = (int(x) for x in grid_thw)
        if t != 1:
            raise FastVError(NO_VIDEOS)
        merge = self.config.vision_config.spatial_merge_size
        return h // merge, w // merge

    def _encode_alone(self, pixels: torch.Tensor, grid_thw: list[int]) -> torch.Tensor:
        """One image's merged features (rows * cols, H) in raster order, encoded on its own."""
        image = {"type": "pixel_values", "pixel_values": pixels, "image_grid_thw": torch.tensor([grid_thw])}
        return self._process_image_input(image)[0]

    def embed_multimodal(self, **kwargs: object) -> Any:
        blobs = kwargs.pop(FIELD, None)
        texts = kwargs.pop(INSTRUCTION, None)
        if kwargs.get("pixel_values_videos") is not None or kwargs.get("video_embeds") is not None:
            raise FastVError(NO_VIDEOS)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        grids = image_input["image_grid_thw"].tolist()
        pruners = [self._pruners.get(None if blobs is None else blobs[i]) for i in range(len(grids))]
        alone = [p is not None and p.method.name in DATA_DEPENDENT for p in pruners]
        if image_input["type"] != "pixel_values" or not any(alone):
            features = list(self._process_image_input(image_input))  # per image: (rows * cols, H), raster order
        else:
            pixels = image_input["pixel_values"].split([t * h * w for t, h, w in grids])
            features = [self._encode_alone(p, g) for p, g in zip(pixels, grids, strict=True)]
        out = []
        for i, (rows, pruner) in enumerate(zip(features, pruners, strict=True)):
            text = self._pruners.instruction(pruner, None if texts is None else texts[i])
            out.append(rows if pruner is None else pruner.prune(rows, None, text)[1])
        return tuple(out)

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features: list[Any]) -> tuple[torch.Tensor, int]:
        """Original positions of the kept tokens; the text after each image resumed past its full grid."""
        images = []
        for feature in sorted(mm_features, key=lambda f: f.mm_position.offset):
            if feature.modality != "image":
                raise FastVError(NO_VIDEOS)
            data = feature.data
            grid_thw = data["image_grid_thw"].data.tolist()
            rows, cols = self._merged_grid(grid_thw)

            blob = field(data, FIELD)

            def features(data: Any = data, grid_thw: list[int] = grid_thw, blob: Any = blob) -> Encoded:
                pixels = data["pixel_values"].data.to(self.visual.device, self.visual.dtype)
                text = self._pruners.instruction(self._pruners.get(blob), field(data, INSTRUCTION))
                return self._encode_alone(pixels, grid_thw), None, text

            kept = self._pruners.kept(blob, rows * cols, self.config.text_config.hidden_size, features)
            offset, k = feature.mm_position.offset, feature.mm_position.length
            if kept.numel() != k:
                raise RuntimeError(f"fastv: image at {offset} has {k} placeholders but {kept.numel()} kept tokens")
            images.append((offset, kept, (rows, cols)))
        return prompt_positions(len(input_tokens), images)
