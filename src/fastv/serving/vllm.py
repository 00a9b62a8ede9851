"""The vLLM plug-in: registers fastv's pruned model classes in every vLLM process.

vLLM loads the entry points of group `vllm.general_plugins` in each of its processes (API server,
engine core, workers) before it resolves a model's architecture; `register` adds fastv's classes to
its `ModelRegistry` under their own architecture names, lazily (as "module:Class" strings), so vLLM's
own LLaVA stays untouched for every model that does not ask for fastv's. A checkpoint opts in with
`"architectures": ["FastvLlavaForConditionalGeneration"]` and a `"fastv"` entry, in its config.json or
through `--hf-overrides` (`hf_overrides` below builds that).
"""

from __future__ import annotations

import json
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


def hf_overrides(settings: Mapping[str, Any] | None, architecture: str = "FastvLlavaForConditionalGeneration") -> str:
    """The `--hf-overrides` JSON that serves a LLaVA checkpoint pruned with these fastv settings.

    settings: e.g. {"method": "divprune", "keep": 48}; None serves the model unpruned (still through
    fastv's class, which also reads checkpoints saved by transformers 5).
    """
    out: dict[str, Any] = {"architectures": [architecture]}
    if settings:
        out[CONFIG_KEY] = dict(settings)
    return json.dumps(out)
