"""Real vLLM servers on 127.0.0.1, started the way `fastv serve` starts them (no mocks).

One server per test module, stopped when the module's tests are done (a CPU holds one at a time):
test_vllm_server.py serves fastv's default LLaVA with `--method divprune --keep 48`,
test_vllm_qwen2_5_vl.py a tiny random-weight Qwen2.5-VL. Requests choose other methods per request
(`mm_processor_kwargs`), so one start (the slow part on a CPU) covers every method. Run in the serving
venv: `make test-serving`.
"""

from __future__ import annotations

import pytest
from servers import fastv_serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """fastv's default model (LLaVA-1.5), divprune at 48 of 144 tokens by default.

    In float32, as the transformers reference runs: vLLM's "auto" dtype would serve the float32
    checkpoint in bfloat16 on a CPU, whose rounding moves attention-ranked choices (holov).
    """
    log = tmp_path_factory.mktemp("server") / "server.log"
    with fastv_serve(["--method", "divprune", "--keep", "48"], log, ["--dtype", "float32"]) as srv:
        yield srv
