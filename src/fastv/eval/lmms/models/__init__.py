"""The layout lmms-eval's legacy `LMMS_EVAL_PLUGINS` loader expects: `<plugin>.models.<name>.<Class>`."""

AVAILABLE_MODELS = {"fastv": "FastVModel", "fastv_llava": "FastVLlava"}  # fastv_llava: the former id
