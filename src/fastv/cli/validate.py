"""Checks on the command line's inputs, run before any model loads.

Why one module: every verb takes some of the same inputs (a model name, images, a video folder, K,
R, a dtype, an output folder), and each must be refused the same way, with a `FastVError` naming the
option and the fix, in the seconds before a model loads rather than after it (or, worse, after an
hour of evaluation). The CLI group (`fastv.cli`) turns every `FastVError` into one line on stderr
and exit code 2. Checks that need the loaded model (K against its depth when the config cannot be
read, budgets against a sample's visual tokens) stay with the engine and the methods.
"""

from __future__ import annotations

import json
import math
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastv.core.errors import FastVError

DTYPES = ("float32", "bfloat16", "float16")
ATTN = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class ModelInfo:
    """What the config tells before loading: the family's model type and the text model's depth."""

    name: str
    model_type: str | None = None  # None: a hub id, known only once loaded
    num_layers: int | None = None

    @property
    def video(self) -> bool | None:
        """Whether the family takes videos (None: unknown until the model loads)."""
        if self.model_type is None:
            return None
        from fastv.core.hf.families import FAMILIES

        family = next((f for f in FAMILIES if self.model_type in f.model_types), None)
        return None if family is None else family.video


def _config_info(name: str, config_path: Path) -> ModelInfo:
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError) as err:
        raise FastVError(f"--model {name!r}: cannot read {config_path} ({err}); save the model again") from err
    if not isinstance(config, dict):
        raise FastVError(f"--model {name!r}: {config_path} is not a JSON object; save the model again")
    text = config.get("text_config") if isinstance(config.get("text_config"), dict) else config
    layers = text.get("num_hidden_layers")
    return ModelInfo(name, config.get("model_type"), layers if isinstance(layers, int) else None)


def model(name: str) -> ModelInfo:
    """'default', a save_pretrained folder (must hold config.json), or a hub id (checked when loaded)."""
    if name == "default":
        from fastv.zoo.default_model import DEFAULT_MODEL_DIR, has_default_weights

        if not has_default_weights():
            raise FastVError(
                f"the default model's weights are missing from {DEFAULT_MODEL_DIR}: "
                "reinstall fastv or train them with `python training/train_default_v2.py`"
            )
        return _config_info(name, DEFAULT_MODEL_DIR / "config.json")
    if not name or not name.strip():
        raise FastVError("--model is empty: give 'default', a save_pretrained folder, or a hub id")
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FastVError(
                f"--model {name!r}: the folder holds no config.json; give a folder written by save_pretrained "
                "(config, weights and processor files), or 'default'"
            )
        return _config_info(name, path / "config.json")
    if path.exists():
        raise FastVError(f"--model {name!r} is a file: give the folder save_pretrained wrote, or 'default'")
    if name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or not _HUB_ID.match(name):
        raise FastVError(f"--model {name!r}: no such folder (and not a hub id like 'org/name'); check the path")
    return ModelInfo(name)


def video_support(info: ModelInfo, has_video: bool, what: str = "--video") -> None:
    """A video on an image-only family would run with no visual tokens at all: refuse it."""
    if has_video and info.video is False:
        raise FastVError(
            f"{what}: {info.name!r} is an image-only {info.model_type} model, it takes images, not videos; "
            "give images instead, or a video model (Video-LLaVA, LLaVA-OneVision, Qwen2-VL...)"
        )


def loaded_video_support(net: Any, has_video: bool) -> None:
    """The same check once a model is loaded (hub ids are known only then)."""
    if not has_video:
        return
    from fastv.core.hf.families import resolve

    family = resolve(net).family
    if not family.video:
        raise FastVError(
            f"--video: this is an image-only {family.name} model, it takes images, not videos; "
            "give --image FILE, or a video model (Video-LLaVA, LLaVA-OneVision, Qwen2-VL...)"
        )


def images(paths: Sequence[Path]) -> None:
    from fastv.loading import check_image_file

    for p in paths:
        check_image_file(p)


def video(folder: Path | None) -> None:
    if folder is None:
        return
    from fastv.loading import check_image_file, frame_files

    for frame in frame_files(folder):
        check_image_file(frame)


def dtype(value: str, allowed: Sequence[str] = DTYPES) -> None:
    if value not in allowed:
        raise FastVError(f"--dtype {value!r}: choose {', '.join(allowed)}")


def attn(value: str) -> None:
    if value not in ATTN:
        raise FastVError(f"--attn {value!r}: choose {', '.join(ATTN)}")


def at_least(option: str, value: int | None, low: int, hint: str = "") -> None:
    if value is not None and value < low:
        raise FastVError(f"{option} {value}: give an integer >= {low}" + (f" ({hint})" if hint else ""))


def ratio(option: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and 0.0 <= value < 1.0):
        raise FastVError(f"{option} {value}: R is the share of visual tokens dropped; give 0 <= R < 1, e.g. 0.5")


def layer(option: str, value: int, info: ModelInfo) -> None:
    """K (or a layer index) within the text model's depth, when the config says it."""
    if value < 0:
        raise FastVError(f"{option} {value}: a layer index is >= 0")
    n = info.num_layers
    if n is not None and value >= n:
        raise FastVError(f"{option} {value}: {info.name!r} has {n} language-model layers; give 0..{n - 1}")


def max_new_tokens(value: int) -> None:
    at_least("--max-new-tokens", value, 1, "an answer needs at least one token")


def port(host: str, number: int) -> None:
    """Refuse a busy or impossible port now, not after the model loaded and the URL was printed."""
    if not 1 <= number <= 65535:
        raise FastVError(f"--port {number}: give a port in 1..65535, e.g. --port 7861")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, number))
        except socket.gaierror as err:
            raise FastVError(f"--host {host!r}: not an address this machine has; use 127.0.0.1") from err
        except OSError as err:
            hint = f"pick another with --port {number + 1 if number < 65535 else 7860}"
            raise FastVError(f"port {number} on {host} is in use or not allowed ({err.strerror}): {hint}") from err


def new_file_folder(option: str, folder: Path) -> None:
    """An output folder must be a folder (or not exist yet)."""
    if folder.exists() and not folder.is_dir():
        raise FastVError(f"{option} {str(folder)!r} is a file: give a folder")
