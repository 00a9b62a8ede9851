"""The vLLM plug-in: registers fastv's pruned model classes in every vLLM process.

vLLM loads the entry points of group `vllm.general_plugins` in each of its processes (API server,
engine core, workers) before it resolves a model's architecture; `register` adds fastv's classes to
its `ModelRegistry` under their own architecture names, lazily (as "module:Class" strings), so vLLM's
own LLaVA stays untouched for every model that does not ask for fastv's. A checkpoint opts in with
`"architectures": ["FastvLlavaForConditionalGeneration"]` and a `"fastv"` entry, in its config.json or
through `--hf-overrides` (`hf_overrides` below builds that).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ARCHITECTURES = {
    "FastvLlavaForConditionalGeneration": "fastv.serving.vllm_llava:FastvLlavaForConditionalGeneration",
}
CONFIG_KEY = "fastv"


def register() -> None:
    """Entry point (`vllm.general_plugins`): make fastv's architectures known to vLLM."""
    from vllm import ModelRegistry

    for arch, target in ARCHITECTURES.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)


def hf_overrides(
    text_config: Mapping[str, Any],
    settings: Mapping[str, Any] | None,
    original_positions: bool = True,
    architecture: str = "FastvLlavaForConditionalGeneration",
) -> dict[str, Any]:
    """The `--hf-overrides` that serve a LLaVA checkpoint pruned with these fastv settings.

    text_config: the checkpoint's text config (a dict, e.g. from its config.json).
    settings: e.g. {"method": "divprune", "keep": 48}; None serves the model unpruned (still through
        fastv's class, which also reads checkpoints saved by transformers 5).
    original_positions: give kept image tokens their original positions, as fastv does in transformers,
        through a one-section M-RoPE (all rotary frequencies on the first row, which is plain RoPE);
        False lets vLLM number the shorter prompt 0..L'-1.
    """
    out: dict[str, Any] = {"architectures": [architecture]}
    if settings:
        out[CONFIG_KEY] = dict(settings)
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
