"""`fastv` (alias `fastv_llava`): any fastv-supported Hugging Face VLM under lmms-eval, with any method.

One class for every family fastv supports: loading and prompting go through `fastv.loading`, and every
request runs through `fastv.run`, so the model sees the same prompts and the same method as `fastv eval`.
Model args: pretrained, method (any name `fastv methods` lists, or a composition a+b; default fastv), k,
ratio | keep, pre_keep, scorer, mode, positions, fastv (false = full model), dtype, attn, device.
k and scorer go to the methods that have them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image
from tqdm import tqdm

from fastv import run
from fastv.core.errors import FastVError
from fastv.core.hf import compat
from fastv.loading import build_inputs, load_model, to_model

# Placeholders lmms-eval prompts may carry; our chat template inserts the model's own.
_PLACEHOLDERS = re.compile(r"<image>|<video>|<image_\d+>")


def _flatten(items: Iterable[Any]) -> list[Any]:
    out: list[Any] = []
    for item in items:
        out.extend(_flatten(item) if isinstance(item, (list, tuple)) else [item])
    return out


class FastVModel(lmms):
    is_simple = True

    def __init__(
        self,
        pretrained: str = "default",
        method: str = "fastv",
        k: int = 2,
        ratio: float | None = None,
        keep: int | None = None,
        scorer: str = "last_token",
        mode: str = "drop",
        positions: str | None = None,
        pre_keep: int | None = None,
        fastv: bool = True,
        dtype: str = "float32",
        attn: str = "sdpa",
        device: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        if int(batch_size) != 1:
            raise FastVError("the fastv lmms-eval model runs one request at a time: give batch_size=1")
        self.pruner = (
            run.method_from_options(
                str(method),
                k=int(k),
                ratio=_number(ratio, float),
                keep=_number(keep, int),
                pre_keep=_number(pre_keep, int),
                scorer=scorer,
                mode=mode,
                positions=positions,
            )
            if _flag(fastv)
            else None
        )
        self.max_new_tokens = int(max_new_tokens)
        self._model, self.processor = load_model(str(pretrained), dtype=dtype, attn=attn)
        self._rank, self._world_size = 0, 1
        try:
            from accelerate import Accelerator

            self.accelerator = Accelerator(cpu=device == "cpu")
            self._rank = self.accelerator.process_index
            self._world_size = self.accelerator.num_processes
            default = self.accelerator.device
        except ImportError:
            default = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self._device = torch.device(device) if device and self._world_size == 1 else default
        self._model.to(self._device)
        self.stats: list[dict[str, Any]] = []  # per request: visual tokens kept, prefill FLOPs

    @property
    def model(self) -> Any:
        return self._model

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    # ---- helpers ------------------------------------------------------------------------------
    def _inputs(self, context: str, visuals: list[Any]) -> dict[str, Any]:
        images = [v.convert("RGB") for v in visuals if isinstance(v, Image.Image)]
        videos = [v for v in visuals if isinstance(v, str)]
        if len(videos) > 1:
            raise FastVError("the fastv lmms-eval model takes at most one video (a folder of frames) per request")
        prompt = _PLACEHOLDERS.sub("", context).strip()
        inputs = build_inputs(self.processor, images, prompt, video=videos[0] if videos else None)
        return to_model(inputs, self._model)

    def _visuals(self, doc_to_visual: Any, doc_id: int, task: str, split: str) -> list[Any]:
        if doc_to_visual is None:
            return []
        return _flatten([doc_to_visual(self.task_dict[task][split][doc_id])])

    def _note(self, stats: Any, prompt_len: int) -> None:
        self.stats.append(
            {
                "visual_kept": sum(stats.num_kept) if stats is not None else None,
                "visual_total": sum(stats.num_visual) if stats is not None else None,
                "prefill_flops": run.prefill_flops(self._model, stats, prompt_len),
            }
        )

    # ---- lmms-eval API ------------------------------------------------------------------------
    @torch.inference_mode()
    def generate_until(self, requests: list[Instance]) -> list[str]:
        out = []
        for req in tqdm(requests, disable=self._rank != 0, desc="fastv"):
            context, gen_kwargs, doc_to_visual, doc_id, task, split = req.args
            gen_kwargs = dict(gen_kwargs or {})
            until = gen_kwargs.pop("until", None)
            until = [until] if isinstance(until, str) else list(until or [])
            inputs = self._inputs(context, self._visuals(doc_to_visual, doc_id, task, split))
            temperature = float(gen_kwargs.get("temperature", 0) or 0)
            sampling = {"temperature": temperature, "top_p": float(gen_kwargs.get("top_p", 1.0) or 1.0)}
            result = run.generate(
                self._model,
                self.processor,
                inputs,
                self.pruner,
                max_new_tokens=int(gen_kwargs.get("max_new_tokens", self.max_new_tokens)),
                do_sample=temperature > 0,
                **(sampling if temperature > 0 else {}),
            )
            self._note(result.stats, inputs["input_ids"].shape[1])
            text = self.tokenizer.decode(result.token_ids, skip_special_tokens=True)  # unstripped: `until` first
            for stop in until:
                if stop:
                    text = text.split(stop)[0]
            text = text.strip()
            out.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return out

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        """log p(continuation | image, context): the prompt is prefilled (and pruned), then the
        continuation is scored against that cache, as if the model had generated it."""
        out = []
        for req in tqdm(requests, disable=self._rank != 0, desc="fastv loglikelihood"):
            context, target, doc_to_visual, doc_id, task, split = req.args
            doc = self.task_dict[task][split][doc_id]
            continuation = target if isinstance(target, str) else target(doc)
            inputs = self._inputs(context, self._visuals(doc_to_visual, doc_id, task, split))
            cont = self.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"].to(
                self._device
            )
            with run.applied(self._model, self.pruner) as handle:
                first = self._model(**inputs, use_cache=True)
                self._note(getattr(handle, "stats", None), inputs["input_ids"].shape[1])
                mask = torch.cat([inputs["attention_mask"], torch.ones_like(cont)], dim=1)
                cache = compat.with_cache(self._model, compat.output_cache(first))
                rest = self._model(input_ids=cont, attention_mask=mask, **cache)
            logits = torch.cat([first.logits[:, -1:], rest.logits[:, :-1]], dim=1).float()
            logprobs = torch.log_softmax(logits, dim=-1)
            picked = logprobs.gather(-1, cont.unsqueeze(-1)).squeeze(-1)
            greedy = bool((logits.argmax(-1) == cont).all())
            out.append((float(picked.sum()), greedy))
        return out

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError("the fastv lmms-eval model does not implement multi-round generation")


def _number(value: Any, cast: type) -> Any:
    """A model arg as a number; lmms-eval passes None, numbers, or strings such as "None"."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        return cast(float(value)) if cast is int else cast(value)
    except (TypeError, ValueError) as err:
        raise FastVError(f"model arg {value!r}: expected a number") from err


def _flag(value: Any) -> bool:
    """fastv=false / 0 / no in model args turns pruning off (lmms-eval may pass the string)."""
    return not (isinstance(value, str) and value.strip().lower() in ("false", "0", "no")) and bool(value)
