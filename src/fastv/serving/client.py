"""A small OpenAI-API client for fastv's serving tests and benchmark (stdlib + Pillow: no extra packages).

Requests are what any OpenAI client sends; `fastv` settings ride in vLLM's `mm_processor_kwargs`.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image


def data_url(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


DEFAULT_MAX_TOKENS = 4  # the shapes world's answers; the tests' transformers reference generates as many


def chat_body(
    question: str, image_url: str | None, fastv: Any = ..., max_tokens: int = DEFAULT_MAX_TOKENS
) -> dict[str, Any]:
    """A greedy chat request: the image (if any), then the question, as fastv's chat template expects."""
    content: list[dict[str, Any]] = []
    if image_url is not None:
        content.append({"type": "image_url", "image_url": {"url": image_url}})
    content.append({"type": "text", "text": question})
    body: dict[str, Any] = {
        "model": "default",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    if fastv is not ...:
        body["mm_processor_kwargs"] = {"fastv": fastv}
    return body


@dataclass
class Reply:
    status: int
    body: dict[str, Any]

    @property
    def text(self) -> str:
        return self.body["choices"][0]["message"]["content"].strip()

    @property
    def error(self) -> str:
        err = self.body.get("error", self.body)
        return err.get("message", "") if isinstance(err, dict) else str(err)


@dataclass
class Server:
    url: str
    log: Path | None = None

    def post(self, path: str, body: dict[str, Any], timeout: float = 120) -> Reply:
        req = urllib.request.Request(
            self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return Reply(r.status, json.load(r))
        except urllib.error.HTTPError as e:
            raw = e.read()
            try:
                return Reply(e.code, json.loads(raw))
            except ValueError:
                return Reply(e.code, {"error": {"message": raw.decode(errors="replace")}})

    def chat(self, *args: Any, **kwargs: Any) -> Reply:
        return self.post("/v1/chat/completions", chat_body(*args, **kwargs))

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, proc: subprocess.Popen, timeout: float) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if proc.poll() is not None:
                tail = self.log.read_text()[-4000:] if self.log else ""
                raise RuntimeError(f"the server exited with {proc.returncode} before it was ready:\n{tail}")
            if self.healthy():
                return
            time.sleep(2)
        raise TimeoutError(f"the server was not ready after {timeout} s; log: {self.log}")
