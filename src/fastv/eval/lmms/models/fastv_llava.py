"""The model's former id: `fastv_llava` stays an alias of `fastv` (`FastVLlava` is `FastVModel`)."""

from fastv.eval.lmms.models.fastv import FastVModel

FastVLlava = FastVModel

__all__ = ["FastVLlava", "FastVModel"]
