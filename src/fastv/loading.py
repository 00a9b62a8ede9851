"""Load a vision-language model with its processor, and turn images + a prompt into model inputs.

Shared by the CLI verbs (`analyze`, `generate`), so it stays family-agnostic: everything goes
through `AutoModelForImageTextToText`, `AutoProcessor` and the processor's own chat template.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image, UnidentifiedImageError

from fastv.core.errors import FastVError
from fastv.core.hf.chat import chat_text
from fastv.zoo import default_model

ImageLike = str | Path | Image.Image
FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif")
# Decompression-bomb guard: a vision-language model resizes every picture to a few hundred pixels a
# side, so a picture over 50 megapixels is a mistake or an attack, never a useful input.
MAX_IMAGE_PIXELS = 50_000_000


def torch_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'float32' / 'bfloat16' / 'float16' (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype), None)
    if not isinstance(value, torch.dtype):
        raise FastVError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
    return value


def load_model(name_or_path: str, dtype: str | torch.dtype = "float32", attn: str = "sdpa") -> tuple[Any, Any]:
    """Return `(model, processor)` in eval mode, with left padding (FastV scores the last column).

    `name_or_path` is "default" (fastv's shipped model), a folder written by `save_pretrained`,
    or a hub id (only where the hub is reachable).
    """
    dt = torch_dtype(dtype)
    if name_or_path == "default":
        model, processor = default_model.load_default(dtype=dt)
        if attn:
            model.set_attn_implementation(attn)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        local = Path(name_or_path).is_dir()
        try:
            processor = AutoProcessor.from_pretrained(name_or_path, local_files_only=local)
            model = AutoModelForImageTextToText.from_pretrained(
                name_or_path, dtype=dt, attn_implementation=attn, local_files_only=local
            )
        except OSError as err:
            where = "folder" if local else "hub id (is the hub reachable? a local folder needs to exist)"
            raise FastVError(f"could not load {name_or_path!r} as a {where}: {err}") from err
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.padding_side = "left"
    return model.eval(), processor


def verify_image_bytes(data: bytes, name: str) -> None:
    """Refuse what Pillow cannot decode completely: empty, not an image, damaged or truncated, or a
    decompression bomb. Checked up front (before a model loads, before row 9,000 of an eval)."""
    if not data:
        raise FastVError(f"image {name!r} is empty (0 bytes): give a PNG or JPEG file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                width, height = im.size
                if width * height > MAX_IMAGE_PIXELS:
                    raise FastVError(
                        f"image {name!r} is {width}x{height} pixels (over {MAX_IMAGE_PIXELS // 1_000_000} megapixels): "
                        "a decompression bomb or a mistake; resize it first"
                    )
                im.verify()  # checksums and structure, without decoding
            with Image.open(io.BytesIO(data)) as im:
                im.load()  # decode: catches truncated pixel data that verify() lets through
    except FastVError:
        raise
    except UnidentifiedImageError as err:
        raise FastVError(f"image {name!r} is not an image Pillow can read: give a PNG or JPEG file") from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise FastVError(
            f"image {name!r} is over {MAX_IMAGE_PIXELS // 1_000_000} megapixels: a decompression bomb or a mistake; "
            "resize it first"
        ) from err
    except Exception as err:  # Pillow raises OSError, SyntaxError, struct.error... for damaged files
        raise FastVError(f"image {name!r} is damaged or truncated ({err}): re-export it as PNG or JPEG") from err


def check_image_file(path: str | Path) -> str:
    """Verify an image file (see `verify_image_bytes`); returns the SHA-1 of its bytes (a content fingerprint)."""
    path = Path(path)
    if path.is_dir():
        raise FastVError(f"image {str(path)!r} is a folder: give an image file (a folder of frames is a --video)")
    if not path.is_file():
        raise FastVError(f"image {str(path)!r} does not exist")
    data = path.read_bytes()
    verify_image_bytes(data, str(path))
    return hashlib.sha1(data).hexdigest()


def frame_files(video: str | Path) -> list[Path]:
    """The frame images of a video folder, sorted by name; refuses a file or a folder without frames."""
    path = Path(video)
    if not path.is_dir():
        raise FastVError(f"video {str(path)!r}: give a folder of frame images (video files are not decoded)")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES and p.is_file())
    if not files:
        raise FastVError(f"no frame images ({', '.join(FRAME_SUFFIXES)}) in {str(path)!r}")
    return files


def load_image(image: ImageLike) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    path = Path(image)
    check_image_file(path)
    with Image.open(path) as im:
        return im.convert("RGB")


def load_frames(video: str | Path | Sequence[ImageLike]) -> list[Image.Image]:
    """A video as frames: a folder of frame images (sorted by name) or a list of images.

    Decoding video files needs extra packages (av/decord/torchvision); frames keep this offline.
    """
    if isinstance(video, (str, Path)):
        video = frame_files(video)
    return [load_image(f) for f in video]


def build_inputs(
    processor: Any,
    image_paths: Sequence[ImageLike] = (),
    prompt: str = "",
    video: str | Path | Sequence[ImageLike] | None = None,
) -> Any:
    """Processor outputs (a `BatchFeature`, batch of 1) for one prompt with its images and/or video."""
    images = [load_image(p) for p in image_paths]
    frames = load_frames(video) if video is not None else None
    text = chat_text(processor, prompt, len(images), frames is not None)
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt"}
    if images:
        kwargs["images"] = images
    if frames is not None:
        kwargs["videos"] = [frames]
    return processor(**kwargs)


def to_model(inputs: Any, model: torch.nn.Module) -> dict[str, Any]:
    """Move tensors to the model's device; floating ones (pixels) to its dtype."""
    out = {}
    for key, value in dict(inputs).items():
        if isinstance(value, torch.Tensor):
            value = value.to(model.device, dtype=model.dtype if value.is_floating_point() else None)
        out[key] = value
    return out
