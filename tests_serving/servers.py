"""Start a real vLLM server on 127.0.0.1 the way `fastv serve` starts it (no mocks), for a block of tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fastv.serving.client import Server

START_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def fastv_serve(args: list[str], log: Path, vllm_args: list[str] = ()) -> Iterator[Server]:
    """`fastv serve ARGS --per-request-methods --port P -- VLLM_ARGS`, up until the block ends."""
    port = free_port()
    cmd = [sys.executable, "-m", "fastv", "serve", *args, "--port", str(port), "--per-request-methods"]
    cmd += ["--", "--enforce-eager", "--max-num-seqs", "16", *vllm_args]
    env = dict(os.environ, VLLM_LOGGING_LEVEL="WARNING")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}", log)
    try:
        srv.wait_ready(proc, START_TIMEOUT_S)
        yield srv
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the server's own process group (start_new_session)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.5)
