"""fastv's pruned Qwen2.5-VL in a real vLLM server: fastv's log-probabilities in transformers, clear errors.

The model is a tiny random-weight Qwen2.5-VL (tests_serving/tiny_qwen.py) served by `fastv serve`. The
reference is fastv's own engine on the same checkpoint in transformers (`method.apply(model)`, greedy
`generate` through the processor and chat template), which keeps every kept token at its original
M-RoPE position. For each prompt (one image with a tall, wide or square grid; two images) and each
setting the server's top-5 log-probabilities at every generated step must equal transformers' within
float noise, and its greedy tokens must be transformers' (a step where transformers' best two tokens
are closer than the noise may go either way; the comparison stops there, and the test says so).
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from servers import fastv_serve
from tiny_qwen import build

from fastv.serving.client import data_url
from fastv.serving.pruning import pre_lm_method

STEPS = 4
TOL = 2e-3  # |log p| difference between vLLM's and transformers' fp32 kernels (measured: 6.1e-4 at most)
SIZES = [(64, 96), (96, 64), (80, 80)]  # (width, height) -> merged grids 6x4, 4x6, 5x5: 24, 24, 25 tokens
QUESTIONS = ["what color is the big circle", "where is the small square", "how many red one"]

# (request settings, fastv settings for the transformers reference); None: the full model
CASES = {
    "full": ({"method": "none"}, None),
    "server-default divprune 8": (..., {"method": "divprune", "keep": 8}),
    "divprune ratio 2/3": ({"method": "divprune", "ratio": 2 / 3}, {"method": "divprune", "ratio": 2 / 3}),
    "random 6": ({"method": "random", "keep": 6, "seed": 1}, {"method": "random", "keep": 6, "seed": 1}),
    "random ratio 1/2": ({"method": "random", "ratio": 0.5}, {"method": "random", "ratio": 0.5}),
    "cdpruner 8": ({"method": "cdpruner", "keep": 8}, {"method": "cdpruner", "keep": 8}),
    "cdpruner ratio 2/3": ({"method": "cdpruner", "ratio": 2 / 3}, {"method": "cdpruner", "ratio": 2 / 3}),
}


def _image(width: int, height: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(height, width, 3, generator=g) * 255).byte().numpy())


IMAGES = [_image(w, h, i) for i, (w, h) in enumerate(SIZES)]
# one image each, then two images (tall, then wide) with text between them only through the template
PROMPTS = [([image], q) for image, q in zip(IMAGES, QUESTIONS, strict=True)]
PROMPTS.append(([IMAGES[0], IMAGES[1]], "where is the big square"))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny_qwen2_5_vl"))


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("qwen_server") / "server.log"
    args = ["--model", str(model_dir), "--served-name", "default", "--method", "divprune", "--keep", "8"]
    with fastv_serve(args, log, ["--dtype", "float32"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def reference(model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(model_dir)

    def run(settings, images, question):
        """(prompt length, visual tokens per image, greedy ids, per-step log-probabilities) of fastv in transformers."""
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": question}]
        text = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = processor(text=[text], images=images, return_tensors="pt")
        kwargs = dict(max_new_tokens=STEPS, do_sample=False, output_scores=True, return_dict_in_generate=True)
        with torch.no_grad():
            if settings is None:
                out = model.generate(**inputs, **kwargs)
            else:
                with pre_lm_method(settings).apply(model):  # the method exactly as the server builds it
                    out = model.generate(**inputs, **kwargs)
        length = inputs["input_ids"].shape[1]
        merge = model.config.vision_config.spatial_merge_size
        visual = [int(g.prod()) // merge**2 for g in inputs["image_grid_thw"]]
        logprobs = [torch.log_softmax(s[0].double(), -1) for s in out.scores]
        return length, visual, out.sequences[0, length:].tolist(), logprobs

    return run


def ask(server, question, images, fastv=...):
    content = [{"type": "image_url", "image_url": {"url": data_url(im)}} for im in images]
    content.append({"type": "text", "text": question})
    body = {
        "model": "default",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": STEPS,
        "temperature": 0,
        "ignore_eos": True,
        "logprobs": True,
        "top_logprobs": 5,
        "return_tokens_as_token_ids": True,  # "token_id:38": no detokenizing to compare
    }
    if fastv is not ...:
        body["mm_processor_kwargs"] = {"fastv": fastv}
    return server.post("/v1/chat/completions", body)


def steps(reply) -> list[list[tuple[int, float]]]:
    """Per generated step: the server's top-5 (token id, log-probability), best first."""
    content = reply.body["choices"][0]["logprobs"]["content"]
    return [[(int(t["token"].split(":")[1]), t["logprob"]) for t in step["top_logprobs"]] for step in content]


@pytest.mark.parametrize("case", list(CASES))
def test_log_probabilities_equal_fastv_in_transformers(server, reference, case):
    request, settings = CASES[case]
    # random seeds image j of a prompt with seed * 65537 + j in transformers, but vLLM encodes images
    # without their place in the prompt (docs/serving.md): its two-image prompts are not compared
    prompts = PROMPTS if settings is None or settings["method"] != "random" else PROMPTS[:-1]
    near_ties, worst = [], 0.0
    for i, (images, question) in enumerate(prompts):
        reply = ask(server, question, images, request)
        assert reply.status == 200, reply.error
        length, visual, greedy, want = reference(settings, images, question)
        got = steps(reply)
        assert len(got) == STEPS
        for s, (top, ref) in enumerate(zip(got, want, strict=True)):
            diffs = [abs(lp - float(ref[t])) for t, lp in top]
            assert max(diffs) < TOL, (case, i, s, top, [float(ref[t]) for t, _ in top])
            worst = max(worst, *diffs)
            if top[0][0] != greedy[s]:
                best = ref.topk(2).values
                assert float(best[0] - best[1]) < TOL, (case, i, s, top[0][0], greedy[s])
                near_ties.append((i, s))
                break  # the two continuations differ from here on
        # the prompt holds only the kept visual tokens
        kept = visual if settings is None else [pre_lm_method(settings).keep_count(n) for n in visual]
        assert reply.body["usage"]["prompt_tokens"] == length - sum(visual) + sum(kept)
    print(f"{case}: largest |log p| difference {worst:.1e}; near-ties (prompt, step) that may differ: {near_ties}")
    assert len(near_ties) < len(prompts)  # the tolerance must not swallow the whole comparison


def test_pruning_changes_the_log_probabilities(server, reference):
    """Negative control: the pruned server is far from the full model, and so are two methods: the
    comparison above could see a wrong kept set or a wrong position."""
    for images, question in PROMPTS:
        _, _, _, full = reference(None, images, question)
        _, _, _, rnd = reference({"method": "random", "keep": 8, "seed": 1}, images, question)
        got = steps(ask(server, question, images))  # the server's default: divprune 8
        assert max(abs(lp - float(full[0][t])) for t, lp in got[0]) > 20 * TOL
        assert max(abs(lp - float(rnd[0][t])) for t, lp in got[0]) > 20 * TOL


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("pool", "needs the visual tokens' grid"),
        ("uniform", "needs the visual tokens' grid"),
        ("visionzip", "supports LLaVA-1.5"),
        ("holov", "supports LLaVA-1.5"),
        ("fastv", "prunes inside the language model"),
        ("budget too large", "cannot keep 30"),
        ("no image", "needs an image"),
        ("video", "video"),
    ],
)
def test_bad_requests_get_a_clear_http_error_and_the_server_keeps_serving(server, change, message):
    images, question = PROMPTS[0]
    good = ask(server, question, images)
    if change in ("pool", "uniform", "visionzip", "holov", "fastv"):
        reply = ask(server, question, images, {"method": change, "keep": 8})
    elif change == "budget too large":
        reply = ask(server, question, images, {"method": "divprune", "keep": 30})  # the image has 24 tokens
    else:
        body = {"model": "default", "max_tokens": STEPS, "messages": [{"role": "user", "content": question}]}
        if change == "video":
            video = {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAAIGZ0eXBpc29t"}}
            body["messages"][0]["content"] = [video, {"type": "text", "text": question}]
        reply = server.post("/v1/chat/completions", body)
    assert 400 <= reply.status < 500, reply.body
    assert message in reply.error, reply.error
    again = ask(server, question, images)
    assert again.status == 200 and steps(again) == steps(good)
