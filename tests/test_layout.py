"""The layered layout (issue 14): `import fastv` stays light and the codemod that made it is a no-op now."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _top_level_modules(code: str) -> set[str]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code + "\nimport sys, json; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_fastv_loads_only_torch_and_transformers():
    """What `import fastv` adds to `import torch, transformers` is fastv and what transformers loads for it:
    none of fastv's tool dependencies (plots, CLI, demo, eval)."""
    base = _top_level_modules("import torch, transformers")
    added = _top_level_modules("import fastv") - base
    tools = {"matplotlib", "gradio", "typer", "rich", "tqdm", "selenium", "datasets", "pycocoevalcap", "lmms_eval"}
    assert "fastv" in added
    assert not added & tools, f"import fastv loads {sorted(added & tools)}"


def test_relayout_is_a_no_op_on_its_own_output():
    out = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "relayout.py"), "--dry-run"], capture_output=True, text=True, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"tools/relayout.py would still change:\n{out.stdout}"
