"""Reading the demo's uploads: images and videos, with errors meant for the page."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence, UnidentifiedImageError

from fastv.core.errors import FastVError

VIDEO_FRAMES = 8


def read_image(image: Any) -> Image.Image:
    """An upload (path, PIL image or array) as RGB; an unreadable file becomes a readable error."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        return Image.fromarray(image.astype(np.uint8)).convert("RGB")
    path = Path(str(image))
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = "not an image format Pillow can read" if isinstance(err, UnidentifiedImageError) else str(err)
        raise FastVError(f"could not read {path.name!r} as an image ({reason}); upload a PNG or JPEG") from err


def read_video(path: Any, frames: int = VIDEO_FRAMES) -> list[Image.Image]:
    """`frames` evenly spaced frames of a video file (animated GIF with Pillow; other formats via PyAV)."""
    path = Path(str(path))
    try:
        with Image.open(path) as im:
            all_frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
    except (UnidentifiedImageError, OSError):
        try:
            import av  # optional: decoding mp4/webm needs it
        except ImportError as err:
            raise FastVError(f"decoding {path.suffix or 'this'} video needs PyAV (`pip install av`)") from err
        try:
            with av.open(str(path)) as container:
                all_frames = [f.to_image().convert("RGB") for f in container.decode(video=0)]
        except Exception as err:  # PyAV raises its own error types
            raise FastVError(f"could not decode {path.name!r} as a video: {err}") from err
    if not all_frames:
        raise FastVError(f"{path.name!r} holds no frames")
    idx = np.linspace(0, len(all_frames) - 1, min(frames, len(all_frames))).round().astype(int)
    return [all_frames[i] for i in idx]


def digest(images: list[Image.Image]) -> str:
    h = hashlib.sha1()
    for im in images:
        h.update(f"{im.size}{im.mode}".encode())
        h.update(im.tobytes())
    return h.hexdigest()
