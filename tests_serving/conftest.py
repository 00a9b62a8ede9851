"""A real vLLM server on 127.0.0.1, started the way `fastv serve` starts it (no mocks).

One server per test session: `fastv serve --method divprune --keep 48` on fastv's default model;
requests choose other methods per request (`mm_processor_kwargs`), so one start (the slow part on a
CPU) covers every method. Run in the serving venv: `make test-serving`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from fastv.serving.client import Server

START_TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "fastv", "serve", "--method", "divprune", "--keep", "48", "--port", str(port)]
    cmd += ["--per-request-methods"]
    cmd += ["--", "--enforce-eager", "--max-num-seqs", "16"]
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
