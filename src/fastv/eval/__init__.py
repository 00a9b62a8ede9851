"""Accuracy vs FLOPs for FastV settings: data loading, metrics, a resumable runner, reports, lmms-eval."""

from fastv.eval.data import EvalSample, load_samples
from fastv.eval.pipeline import EvalConfig, EvalResult, evaluate
from fastv.eval.settings import Setting, fastv_grid, fastv_setting, full_model

__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalSample",
    "Setting",
    "evaluate",
    "fastv_grid",
    "fastv_setting",
    "full_model",
    "load_samples",
]
