"""FLOPs of a vision-language model's prefill, with and without FastV.

Two views:

* `theory_*`: the FastV paper's per-layer estimate `4nd^2 + 2n^2d + 2ndm` (multiply-accumulates of a
  square-attention, two-matrix-FFN layer), used to reproduce the paper's "45% fewer FLOPs".
* `prefill_flops` / `estimate`: an exact count for the real architecture (grouped-query attention,
  gated MLPs, the LM head on the last token only, the vision tower and projector apart), in the
  convention of `torch.utils.flop_counter.FlopCounterMode`: 2 FLOPs per multiply-accumulate of every
  matmul/convolution, attention counted dense (`4*B*H*S_q*S_kv*D`), element-wise ops ignored.

Everything here is pure arithmetic on config fields: no weights are needed.
"""

from fastv.core.cost import (
    PrefillFlops,
    TextShape,
    decode_step_flops,
    format_flops,
    kv_cache_bytes,
    prefill_flops,
    prefill_report,
)
from fastv.flops.budget import FlopsReport, estimate, solve_budget
from fastv.flops.llm import fastv_layer_seq_lens, flop_counter, kept_count, theory_layer_flops, theory_reduction
from fastv.flops.vision import VisionFlops, vision_flops

__all__ = [
    "FlopsReport",
    "PrefillFlops",
    "TextShape",
    "VisionFlops",
    "decode_step_flops",
    "estimate",
    "format_flops",
    "fastv_layer_seq_lens",
    "flop_counter",
    "kept_count",
    "kv_cache_bytes",
    "prefill_flops",
    "prefill_report",
    "solve_budget",
    "theory_layer_flops",
    "theory_reduction",
    "vision_flops",
]
