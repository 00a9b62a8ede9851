"""Serving pruned models: fastv's pre-LM methods inside vLLM (see docs/serving.md).

`pruning` runs a method on one image's features without the engine's hooks (torch and fastv only);
`settings` reads, checks and carries a served model's fastv settings; `mrope` computes Qwen2.5-VL's
original positions for a pruned prompt; `vllm` is the vLLM plug-in (entry point `vllm.general_plugins`)
and builds `--hf-overrides`; `vllm_llava` and `vllm_qwen2_5_vl` are the model classes it registers and
`vllm_processing` their shared processor changes (these need the `vllm` extra); `launch` builds the
server command that `fastv serve` runs; `client` is a small OpenAI-API client for the tests and benchmark.
"""
