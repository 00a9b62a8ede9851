"""Serving pruned models: fastv's pre-LM methods inside vLLM (see docs/serving.md).

`fastv.serving.pruning` runs a method on one image's features without the engine's hooks (torch and
fastv only); `fastv.serving.vllm` is the vLLM plug-in (entry point `vllm.general_plugins`), and
`fastv.serving.vllm_llava` the model class it registers (needs the `vllm` extra).
"""
