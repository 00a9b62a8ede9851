"""vLLM's LLaVA-1.5 with fastv's pre-LM methods: each image gets `keep` placeholders and features.

Imported by vLLM (lazily, through the registration in `fastv.serving.vllm`), never by fastv itself:
it subclasses vLLM's own classes and needs vllm installed (extra `fastv-lvlm[vllm]`).

What changes against vLLM's `LlavaForConditionalGeneration`, all through its public extension points:
- settings: the model config's `fastv` entry (config.json or `--hf-overrides '{"fastv": {...}}'`) is
  the server's default; a request may choose its own with `"mm_processor_kwargs": {"fastv": {...}}`
  (`{"fastv": {"method": "none"}}`: unpruned). The API server's processor validates them (a bad
  method or budget is an HTTP 400 naming the fix) and hands them to the engine with each image, as
  a field of the image's processed data, so they travel with vLLM's caches (`fastv.serving.settings`
  and `fastv.serving.vllm_processing`, shared with the Qwen2.5-VL class);
- the processor gives each image the method's kept count of placeholders, so the KV cache holds only
  those; `embed_multimodal` computes the full features and returns the rows kept (or merged) by
  fastv's own method code (`fastv.serving.pruning.ImagePruner`); for the methods that choose by the
  features it encodes each image alone (`_one_image`), as the positions were chosen, so a batch's other
  floats cannot pair one kept set's features with another's positions at a near-tie;
- original positions through `get_mrope_input_positions` (see the class docstring);
- the vision tower's [CLS] attention is observed on its last built layer, for the methods that rank
  by it (visionzip, holov; `fastv.serving.tower_attention`);
- instruction-conditioned methods (cdpruner) get the prompt's token ids after its image as a per-image
  field (`fastv.serving.vllm_processing`), embedded with the model's own `embed_input_ids`;
- the weight mapper also reads checkpoints whose CLIP tower has no `vision_model.` level
  (`vision_tower.embeddings.*`, as transformers 5 saves LLaVA), such as fastv's default model.
"""

from __future__ import annotations

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

from fastv.core.hf.attention_tap import query_attention
from fastv.serving.pruning import DATA_DEPENDENT, ImagePruner
from fastv.serving.settings import FIELD, INSTRUCTION, Encoded, Pruners, field
from fastv.serving.tower_attention import TowerView, reads_cls_attention, tower_extra
from fastv.serving.vllm_processing import PrunedImagesProcessor


def _num_image_tokens(hf_config: Any) -> int:
    """Visual tokens of one image in the full model (LLaVA-1.5: a square grid, plus CLS with 'full')."""
    vc = hf_config.vision_config
    n = (vc.image_size // vc.patch_size) ** 2
    return n if hf_config.vision_feature_select_strategy == "default" else n + 1


class FastvLlavaProcessingInfo(LlavaProcessingInfo):
    """vLLM's LLaVA processing info; `get_num_image_tokens` stays the full count (the upper bound)."""


class FastvLlavaMultiModalProcessor(PrunedImagesProcessor, LlavaMultiModalProcessor):
    """Each image: the kept count of placeholders, and the settings that chose it as a data field."""

    def tokens_per_image(self) -> int:
        return _num_image_tokens(self.info.get_hf_config())


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
        self._pruners = Pruners(self, _num_image_tokens(self.config))
        self._seen: dict[str, torch.Tensor] = {}
        self._observe = False
        self._observe_cls_attention()

    # ---- features ---------------------------------------------------------------------------------
    def embed_multimodal(self, **kwargs: object) -> Any:
        blobs = kwargs.pop(FIELD, None)
        texts = kwargs.pop(INSTRUCTION, None)
        image_input = self._parse_and_validate_image_input(**kwargs)
        if image_input is None:
            return []
        if image_input["type"] != "pixel_values":
            return self._process_image_input(image_input)
        count = len(image_input["pixel_values"])
        pruners = [self._pruners.get(None if blobs is None else blobs[i]) for i in range(count)]
        if any(p is not None and p.method.name in DATA_DEPENDENT for p in pruners):
            # one at a time, as `_kept_indices` encodes an image for its positions: a batch may take other
            # kernels (other floats), and a near-tie could then place one kept set's features at another's
            # positions
            images = zip(image_input["pixel_values"], pruners, strict=True)
            alone = [self._encode(self._one_image(pixels), [p]) for pixels, p in images]
            projected, extras = [rows[0] for rows, _ in alone], [seen[0] for _, seen in alone]
        else:
            projected, extras = self._encode(image_input, pruners)
        out = []
        for i, (rows, pruner) in enumerate(zip(projected, pruners, strict=True)):
            text = self._pruners.instruction(pruner, None if texts is None else texts[i])
            out.append(rows if pruner is None else pruner.prune(rows, extras[i], text)[1])
        return tuple(out)

    def _one_image(self, pixels: torch.Tensor) -> dict[str, Any]:
        """One image's pixels (3, H, W) as a batch of one for `_encode`, on the tower's device and dtype."""
        weight = next(self.vision_tower.parameters())
        return {"type": "pixel_values", "pixel_values": pixels[None].to(weight.device, weight.dtype)}

    def _encode(
        self, image_input: Any, pruners: list[ImagePruner | None]
    ) -> tuple[torch.Tensor, list[dict[str, Any] | None]]:
        """The images' projected features (N, T, H), and per image what its method reads of the tower.

        The tower's [CLS] attention is observed on this pass only where some image's method ranks by it
        (visionzip, holov: `fastv.serving.tower_attention`).
        """
        methods = [None if p is None else p.method for p in pruners]
        self._observe = any(m is not None and reads_cls_attention(m) for m in methods)
        try:
            vision = self._process_image_pixels(image_input)  # (N, T, Hv) before the projector
        finally:
            self._observe = False
        projected = self.multi_modal_projector(vision)
        seen, self._seen = self._seen, {}
        extras = [
            None
            if m is None or not reads_cls_attention(m)
            else tower_extra(
                m, TowerView(seen["cls"][i], seen["keys"][i], vision[i], projected[i], self.multi_modal_projector)
            )
            for i, m in enumerate(methods)
        ]
        return projected, extras

    def _observe_cls_attention(self) -> None:
        """Record the tower's [CLS] attention and keys at the projected layer, for the methods that rank by it.

        vLLM builds the tower only up to `vision_feature_layer`, so that layer is the last one built.
        One pre-hook on its attention serves every such method (`fastv.serving.tower_attention`).
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

        Methods that choose by the features (divprune, visionzip, holov, cdpruner) run the vision tower here too: the
        positions are needed when the request is scheduled, before its encoder step.
        """
        data = feature.data
        blob = field(data, FIELD)
        n = _num_image_tokens(self.config)

        def features() -> Encoded:
            pruner = self._pruners.get(blob)
            projected, extras = self._encode(self._one_image(data["pixel_values"].data), [pruner])
            return projected[0], extras[0], self._pruners.instruction(pruner, field(data, INSTRUCTION))

        return self._pruners.kept(blob, n, self.config.text_config.hidden_size, features), n
