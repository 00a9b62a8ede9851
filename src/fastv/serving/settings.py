"""A served model's fastv settings: read from its config, checked, carried with each image, bound to pruners.

One home for what every pruned model class in a server does with settings, whatever the family:
- the server's default comes from the model config's `fastv` entry (config.json or vLLM's
  `--hf-overrides '{"fastv": {"method": "divprune", "keep": 48}}'`); a request may bring its own;
- `normalized` checks them where they arrive (a `FastVError` is a `ValueError`, which vLLM's API server
  answers with HTTP 400 and the message);
- `encode`/`decode` turn them into a per-image tensor field (UTF-8 JSON bytes), so they travel with
  the image through vLLM's processor and encoder caches to the engine process;
- `Pruners` binds each distinct setting to one `ImagePruner` (fastv's own selection code) per model,
  and says which tokens an image keeps before its encoder step (`kept`), for the positions;
- instruction-conditioned methods (cdpruner) also get the prompt's token ids after its last image
  (`instruction_ids`), which the processor adds to the request's processor kwargs under `INSTRUCTION`
  (so vLLM hashes them into every cache key of the image) and to each image as a field of that name.

Nothing here imports vLLM.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import torch

from fastv.core.errors import FastVError
from fastv.serving.pruning import (
    DATA_DEPENDENT,
    INSTRUCTION_CONDITIONED,
    ImagePruner,
    adapter_for,
    check_budget,
    pre_lm_method,
)

CONFIG_KEY = "fastv"  # the model config's entry, and the request's `mm_processor_kwargs` key
FIELD = "fastv_settings"  # per-image processed-data field: the settings as UTF-8 JSON bytes
INSTRUCTION = "fastv_instruction"  # processor kwarg and per-image field: the prompt's token ids after its last image
# what a model class computes for one image: (features (n, H), what the method's observers saw, the
# input embeddings (m, H) of the instruction for instruction-conditioned methods, else None)
Encoded = tuple[torch.Tensor, "dict[str, Any] | None", "torch.Tensor | None"]


def server_settings(hf_config: Any, n: int | None = None) -> dict[str, Any] | None:
    """The model config's fastv settings, e.g. {"method": "divprune", "keep": 48}; None: unpruned.

    n: visual tokens per image where the family has a fixed count (LLaVA-1.5), None where images differ.
    """
    return normalized(getattr(hf_config, CONFIG_KEY, None), hf_config, n)


def normalized(settings: Any, hf_config: Any, n: int | None = None) -> dict[str, Any] | None:
    """Checked settings (None: unpruned); `n` as in `server_settings`."""
    if settings is None or settings == "none":
        return None
    if not isinstance(settings, Mapping):
        raise FastVError(
            f'fastv settings must be an object like {{"method": "divprune", "keep": 48}}, not {settings!r}'
        )
    if settings.get("method") in (None, "none") and set(settings) <= {"method"}:
        return None
    check_budget(pre_lm_method(settings), hf_config, n)
    return dict(settings)


def reads_instruction(settings: Mapping[str, Any] | None) -> bool:
    """Whether checked settings (`normalized`) choose by the prompt's text after its images (cdpruner)."""
    return settings is not None and settings["method"] in INSTRUCTION_CONDITIONED


def instruction_ids(prompt: Sequence[int], image_tokens: Collection[int]) -> list[int]:
    """The prompt's token ids after its last image token: the text an instruction-conditioned method
    reads, as fastv reads the rows after a sample's last visual token. The prompt may hold one
    placeholder per image (before vLLM expands it) or the expanded run: the text after is the same."""
    last = max((i for i, t in enumerate(prompt) if t in image_tokens), default=len(prompt) - 1)
    return [int(t) for t in prompt[last + 1 :]]


def field(data: Mapping[str, Any], key: str) -> torch.Tensor | None:
    """One image's processed-data field (vLLM's `MultiModalFieldElem.data`), None where it has none."""
    return data[key].data if key in data else None


def encode(settings: dict[str, Any] | None) -> torch.Tensor:
    return torch.tensor(list(json.dumps(settings, sort_keys=True).encode()), dtype=torch.uint8)


def decode(blob: torch.Tensor) -> str:
    return bytes(blob.tolist()).decode()


class Pruners:
    """One model's pruners, one per distinct setting; `get(blob)` for an image's settings field."""

    def __init__(self, model: Any, n: int | None = None) -> None:
        self.default = server_settings(model.config, n)
        self.adapter = adapter_for(model)
        self._cache: dict[str, ImagePruner | None] = {}

    def get(self, blob: torch.Tensor | None) -> ImagePruner | None:
        """The pruner for an image's settings (None: the server's default); None: keep the image whole."""
        key = json.dumps(self.default, sort_keys=True) if blob is None else decode(blob)
        if key not in self._cache:
            settings = json.loads(key)
            self._cache[key] = None if settings is None else ImagePruner(pre_lm_method(settings), self.adapter)
        return self._cache[key]

    def instruction(self, pruner: ImagePruner | None, ids: torch.Tensor | None) -> torch.Tensor | None:
        """The input embeddings (m, H) of an image's instruction field for a method that reads it, else None.

        The served model's own embedding table embeds them (vLLM's `embed_input_ids`, without
        multimodal embeddings), as its language model embeds the prompt's text.
        """
        if pruner is None or pruner.method.name not in INSTRUCTION_CONDITIONED:
            return None
        if ids is None:
            raise FastVError(f"{pruner.method.name}: the image came without its prompt's instruction tokens")
        model = self.adapter.model
        return model.embed_input_ids(ids.reshape(-1).to(next(model.parameters()).device))

    def kept(
        self,
        blob: torch.Tensor | None,
        n: int,
        hidden: int,
        features: Callable[[], Encoded],
    ) -> torch.Tensor:
        """Indices an image of n tokens keeps, when vLLM asks for a request's positions (before its encoder step).

        Methods that choose without looking at the features (random) choose on zeros; the others
        (divprune, visionzip, holov, cdpruner) need the image's features: `features()` runs the vision
        tower on this image alone and returns them as the class's `embed_multimodal` computes them for
        this method (`Encoded`).
        """
        pruner = self.get(blob)
        if pruner is None:
            return torch.arange(n)
        if pruner.method.name not in DATA_DEPENDENT:
            return pruner.prune(torch.zeros(n, hidden))[0].cpu()
        with torch.inference_mode():
            return pruner.prune(*features())[0].cpu()
