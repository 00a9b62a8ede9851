"""`fastv serve --dry-run`: the vLLM command it would run, and its refusals (no vLLM needed here).

The real server is tested in tests_serving/ (its own environment: `make test-serving`).
"""

from __future__ import annotations

import json
import shlex

from typer.testing import CliRunner

from fastv.cli import _register, app


def _invoke(*args: str):
    _register()
    return CliRunner().invoke(app, ["serve", *args])


def _overrides(output: str) -> dict:
    cmd = shlex.split(output.strip().splitlines()[-1])  # printed with shlex.join: copy-pasteable
    return json.loads(cmd[cmd.index("--hf-overrides") + 1])


def test_dry_run_prints_url_curl_and_the_vllm_command():
    out = _invoke("--method", "divprune", "--keep", "48", "--port", "8123", "--dry-run", "--", "--enforce-eager")
    assert out.exit_code == 0, out.output
    assert "http://127.0.0.1:8123/v1" in out.output
    assert "divprune, 48 visual tokens kept per image" in out.output
    assert "curl -s http://127.0.0.1:8123/v1/chat/completions" in out.output
    command = out.output.strip().splitlines()[-1]
    assert "-m vllm.entrypoints.openai.api_server" in command and "--host 127.0.0.1" in command
    assert command.endswith("--enforce-eager")
    assert "--trust-request-mm-kwargs" not in command
    overrides = _overrides(out.output)
    assert overrides["architectures"] == ["FastvLlavaForConditionalGeneration"]
    assert overrides["fastv"] == {"method": "divprune", "keep": 48}
    # the default model's head_dim is 64: all 32 rotary frequencies on the first M-RoPE row
    assert overrides["text_config"]["rope_parameters"]["mrope_section"] == [32, 0, 0]


def test_the_default_model_is_served_in_float32_unless_asked_otherwise():
    """vLLM's "auto" dtype serves float32 checkpoints in bfloat16 on a CPU, which changes the tiny model's answers."""
    command = shlex.split(_invoke("--dry-run").output.strip().splitlines()[-1])
    assert command[command.index("--dtype") + 1] == "float32"
    command = shlex.split(_invoke("--dry-run", "--", "--dtype", "bfloat16").output.strip().splitlines()[-1])
    assert command.count("--dtype") == 1 and command[command.index("--dtype") + 1] == "bfloat16"


def test_unpruned_renumbered_and_per_request_options():
    out = _invoke("--renumber-positions", "--per-request-methods", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "unpruned" in out.output and "--trust-request-mm-kwargs" in out.output
    overrides = _overrides(out.output)
    assert "fastv" not in overrides and "text_config" not in overrides


def test_ratio_budget_is_reported_per_image():
    out = _invoke("--method", "pool", "--ratio", "0.75", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "36 visual tokens kept per image" in out.output


def test_refuses_methods_and_budgets_a_server_cannot_run():
    for args, message in [
        (("--method", "fastv", "--keep", "48"), "prunes inside the language model"),
        (("--method", "pool", "--keep", "47"), "rows x cols"),
        (("--method", "divprune", "--keep", "200"), "cannot keep 200"),
        (("--method", "nope"), "unknown method"),
        (("--model", "/nonexistent", "--method", "pool", "--keep", "16"), "config.json"),
    ]:
        out = _invoke(*args, "--dry-run")
        assert out.exit_code == 2, (args, out.output)
        assert message in out.output.replace("\n", " "), out.output


def test_without_vllm_it_says_how_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    out = _invoke("--method", "pool", "--keep", "16")
    assert out.exit_code == 2, out.output
    assert "pip install 'fastv-lvlm[vllm]'" in out.output


def _qwen_dir(tmp_path, architecture="Qwen2_5_VLForConditionalGeneration"):
    """A checkpoint folder as far as `--dry-run` reads it: config.json and the chat template."""
    from tiny_families import qwen2_5_vl

    config = qwen2_5_vl()[0].config.to_dict()
    config["architectures"] = [architecture]
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return str(tmp_path)


def test_a_qwen2_5_vl_checkpoint_gets_fastvs_qwen_class(tmp_path):
    out = _invoke("--model", _qwen_dir(tmp_path), "--method", "divprune", "--keep", "8", "--dry-run")
    assert out.exit_code == 0, out.output
    assert "method=divprune, keep=8 per image" in out.output  # counts follow each image's size
    overrides = _overrides(out.output)
    assert overrides == {
        "architectures": ["FastvQwen2_5_VLForConditionalGeneration"],
        "fastv": {"method": "divprune", "keep": 8},
    }
    cmd = shlex.split(out.output.strip().splitlines()[-1])
    assert cmd[cmd.index("--limit-mm-per-prompt") + 1] == '{"video": 0}'  # images only


def test_refuses_what_qwen2_5_vl_cannot_run(tmp_path):
    model = _qwen_dir(tmp_path)
    for args, message in [
        (("--method", "pool", "--keep", "8"), "needs the visual tokens' grid"),
        (("--method", "uniform", "--keep", "8"), "needs the visual tokens' grid"),
        (("--method", "visionzip", "--keep", "8"), "supports LLaVA-1.5"),
        (("--method", "divprune", "--keep", "8", "--renumber-positions"), "multimodal RoPE"),
    ]:
        out = _invoke("--model", model, *args, "--dry-run")
        assert out.exit_code == 2, (args, out.output)
        assert message in out.output.replace("\n", " "), out.output
    out = _invoke("--model", _qwen_dir(tmp_path, "Qwen3VLForConditionalGeneration"), "--dry-run")
    assert out.exit_code == 2 and "fastv serves" in out.output, out.output
