"""Serving pruned models: fastv's pre-LM methods inside vLLM (see docs/serving.md).

`pruning` runs a method on one image's features without the engine's hooks (torch and fastv only);
`vllm` is the vLLM plug-in (entry point `vllm.general_plugins`) and builds `--hf-overrides`;
`vllm_llava` is the model class it registers (needs the `vllm` extra); `launch` builds the server
command that `fastv serve` runs; `client` is a small OpenAI-API client for the tests and benchmark.
"""
