"""The vLLM plug-in: registers fastv's pruned model classes in every vLLM process.

vLLM loads the entry points of group `vllm.general_plugins` in each of its processes (API server,
engine core, workers) before it resolves a model's architecture; `register` adds fastv's classes to
its `ModelRegistry` under their own architecture names, lazily (as "module:Class" strings), so vLLM's
own LLaVA and Qwen2.5-VL stay untouched for every model that does not ask for fastv's. A checkpoint
opts in with `"architectures": ["FastvLlavaForConditionalGeneration"]` (or
`FastvQwen2_5_VLForConditionalGeneration`) and a `"fastv"` entry, in its config.json or through
`--hf-overrides` (`hf_overrides` below builds that from the checkpoint's own architecture).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastv.core.errors import FastVError
from fastv.serving.settings import CONFIG_KEY

ARCHITECTURES = {
    "FastvLlavaForConditionalGeneration": "fastv.serving.vllm_llava:FastvLlavaForConditionalGeneration",
    "FastvQwen2_5_VLForConditionalGeneration": (
        "fastv.serving.vllm_qwen2_5_vl:FastvQwen2_5_VLForConditionalGeneration"
    ),
}
# a checkpoint's own architecture (config.json) -> fastv's pruned variant of it
PRUNED = {
    "LlavaForConditionalGeneration": "FastvLlavaForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration": "FastvQwen2_5_VLForConditionalGeneration",
}
# vLLM arguments a pruned variant needs: fastv's Qwen2.5-VL class prunes images and takes no videos
# (so none are profiled at start-up, and a request with one gets vLLM's own HTTP 400)
VLLM_ARGS = {"FastvQwen2_5_VLForConditionalGeneration": ["--limit-mm-per-prompt", '{"video": 0}']}


def register() -> None:
    """Entry point (`vllm.general_plugins`): make fastv's architectures known to vLLM."""
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)


def pruned_architecture(config: Mapping[str, Any]) -> str:
    """fastv's class for a checkpoint, decided by the architecture in its config.json."""
    archs = list(config.get("architectures") or [])
    for arch in archs:
        if arch in PRUNED:
            return PRUNED[arch]
        if arch in ARCHITECTURES:
            return arch
    raise FastVError(
        f"fastv serves {', '.join(PRUNED)} checkpoints; this config.json names {archs or 'no architecture'}"
    )


def hf_overrides(
    config: Mapping[str, Any], settings: Mapping[str, Any] | None, original_positions: bool = True
) -> dict[str, Any]:
    """The `--hf-overrides` that serve a checkpoint pruned with these fastv settings.

    config: the checkpoint's config (a dict, e.g. from its config.json).
    settings: e.g. {"method": "divprune", "keep": 48}; None serves the model unpruned (still through
        fastv's class, which also reads checkpoints saved by transformers 5).
    original_positions: give kept image tokens their original positions, as fastv does in transformers.
        LLaVA (plain RoPE): through a one-section M-RoPE (all rotary frequencies on the first row, which
        is plain RoPE); False lets vLLM number the shorter prompt 0..L'-1. Qwen2.5-VL (M-RoPE): always
        (its class gives the kept tokens their M-RoPE cells); False is refused, as fastv refuses
        renumbered positions for M-RoPE models in transformers.
    """
    architecture = pruned_architecture(config)
    out: dict[str, Any] = {"architectures": [architecture]}
    if settings:
        out[CONFIG_KEY] = dict(settings)
    if architecture == "FastvQwen2_5_VLForConditionalGeneration":
        if not original_positions:
            raise FastVError(
                "Qwen2.5-VL uses multimodal RoPE (3-row positions over the image grid): its kept tokens keep "
                "their original positions; drop --renumber-positions"
            )
        return out
    text_config = config["text_config"]
    if original_positions:
        rope = dict(text_config.get("rope_parameters") or {"rope_type": "default"})
        if rope.get("rope_type", "default") != "default":
            raise ValueError(
                f"original positions need plain RoPE; this model's rope type is {rope['rope_type']!r}: "
                "serve it with original_positions=False (vLLM renumbers the kept tokens)"
            )
        rope.setdefault("rope_theta", text_config.get("rope_theta", 10000.0))
        head_dim = text_config.get("head_dim") or text_config["hidden_size"] // text_config["num_attention_heads"]
        rotary = int(head_dim * rope.get("partial_rotary_factor", text_config.get("partial_rotary_factor", 1.0)))
        rope["mrope_section"] = [rotary // 2, 0, 0]
        out["text_config"] = {"rope_parameters": rope}
    return out
