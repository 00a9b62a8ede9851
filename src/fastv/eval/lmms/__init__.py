"""lmms-eval plug-in: `lmms-eval --model fastv --model_args pretrained=...,method=pdrop,keep=192 --tasks ...`.

Registered two ways, both documented by lmms-eval:
* entry point group ``lmms_eval.models`` -> `manifests` (lmms-eval >= 0.6, the recommended way);
* ``LMMS_EVAL_PLUGINS=fastv.eval.lmms`` (older releases): lmms-eval imports ``fastv.eval.lmms.models``
  and reads its ``AVAILABLE_MODELS``.
"""

from __future__ import annotations

MODEL_ID = "fastv"
ALIASES = ("fastv_llava",)  # the former id: every family, not only LLaVA, so the id is now `fastv`
CLASS_PATH = "fastv.eval.lmms.models.fastv.FastVModel"


def manifests() -> list:
    """Entry-point payload: lmms-eval calls it and registers what it returns."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_ID, simple_class_path=CLASS_PATH, aliases=ALIASES)]
