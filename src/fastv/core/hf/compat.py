"""Every contact fastv has with transformers internals, in one place.

transformers moves monthly, and fastv's engine works *inside* a model's forward call: it reads
call arguments, swaps the attention implementation, inspects the KV cache. Each of those is an
internal detail that a release may rename (5.24 renamed the models' `past_key_values` argument to
`cache`; 5.0 renamed `past_key_value` to `past_key_values`). So the rest of fastv asks this module
and never spells an argument name or reaches into a registry itself, and this module recognises
what it knows and raises `CompatibilityError` (a `FastVError`) naming the installed version and the
tested range for what it does not: an absent argument must never silently mean "prefill".

How the cache is found: by type (a `transformers.Cache` instance), under whatever name the
installed version passes it, never by name alone.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
import transformers
from packaging.version import Version
from transformers import AttentionInterface
from transformers.cache_utils import Cache, DynamicLayer
from transformers.masking_utils import AttentionMaskInterface

from fastv.core.errors import FastVError

# The releases CI runs the suite on (Makefile: `make test` newest, `make test-oldest` oldest).
# pyproject.toml declares `transformers>=OLDEST,<NEXT_MINOR`: keep the three in step
# (`make test-transformers V=x.y.z` reruns the suite on any release; see the README).
OLDEST_TESTED = "5.17.0"
NEWEST_TESTED = "5.25.0"
UPPER_BOUND = "5.26"  # exclusive: the first release nobody here has tested

# Names a release has used for the KV cache argument of a model / decoder layer forward.
CACHE_ARGUMENT_NAMES = ("cache", "past_key_values", "past_key_value")
# Argument names fastv reads or rewrites; unchanged across the tested range.
INPUT_IDS = "input_ids"
INPUTS_EMBEDS = "inputs_embeds"
ATTENTION_MASK = "attention_mask"
POSITION_IDS = "position_ids"
POSITION_EMBEDDINGS = "position_embeddings"
HIDDEN_STATES = "hidden_states"


class CompatibilityError(FastVError):
    """The installed transformers does something fastv does not recognise; never guessed around."""


def installed_version() -> str:
    return transformers.__version__


def tested_range() -> str:
    return f"{OLDEST_TESTED} to {NEWEST_TESTED}"


def incompatible(problem: str) -> CompatibilityError:
    """An error for a call fastv cannot interpret, naming the installed version and the tested range."""
    return CompatibilityError(
        f"{problem}. Installed transformers {installed_version()}; fastv is tested on transformers "
        f"{tested_range()} (pip install 'transformers>={OLDEST_TESTED},<{UPPER_BOUND}'), or report this "
        "at fastv's issue tracker with the version"
    )


def in_tested_range(version: str | None = None) -> bool:
    v = Version(version or installed_version())
    return Version(OLDEST_TESTED) <= v < Version(UPPER_BOUND)


@functools.cache
def warn_if_untested() -> bool:
    """Warn once per process when the installed transformers lies outside the tested range."""
    if in_tested_range():
        return False
    warnings.warn(
        f"fastv is tested on transformers {tested_range()}; transformers {installed_version()} is installed. "
        "fastv refuses calls it cannot interpret, but untested releases may break it: "
        f"pip install 'transformers>={OLDEST_TESTED},<{UPPER_BOUND}'",
        stacklevel=3,
    )
    return True


# ---- call arguments ----------------------------------------------------------------------------
def find_cache(kwargs: Mapping[str, Any], args: tuple = ()) -> Cache | None:
    """The KV cache among a forward call's arguments, found by type under any name (or position).

    A value under a known cache name that is neither None nor a `Cache` (a legacy tuple cache,
    or a new container) is refused rather than ignored.
    """
    found = [v for v in (*args, *kwargs.values()) if isinstance(v, Cache)]
    if len({id(v) for v in found}) > 1:
        raise incompatible("a forward call received two KV cache objects")
    if found:
        return found[0]
    for name in CACHE_ARGUMENT_NAMES:
        value = kwargs.get(name)
        if value is not None:
            raise incompatible(
                f"the {name!r} argument holds a {type(value).__name__}, not a transformers Cache "
                "(legacy tuple caches are not supported: pass a DynamicCache or let generate create one)"
            )
    return None


def without_cache(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """A layer's keyword arguments minus the KV cache (under any name) and the flags that write to it."""
    return {
        k: v
        for k, v in kwargs.items()
        if k not in (*CACHE_ARGUMENT_NAMES, HIDDEN_STATES, "use_cache", "output_attentions")
        and not isinstance(v, Cache)
    }


def cache_length(cache: Cache | None) -> int:
    """Tokens the cache holds (as transformers counts them: from its first layer)."""
    return 0 if cache is None else int(cache.get_seq_length())


def layer_cache_length(cache: Cache | None, layer: int) -> int | None:
    if cache is None:
        return None
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise incompatible(f"{type(cache).__name__} has no per-layer storage ('layers')")
    return int(layers[layer].get_seq_length())


def non_dynamic_layer(cache: Cache | None) -> str | None:
    """Name of a fixed-size cache layer type (static, sliding, quantized...), or None if all are dynamic."""
    if cache is None:
        return None
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise incompatible(f"{type(cache).__name__} has no per-layer storage ('layers')")
    for layer in layers:
        if not isinstance(layer, DynamicLayer):
            return type(layer).__name__
    return None


def output_cache(output: Any) -> Cache | None:
    """The cache a model output or generate output carries (`cache` from 5.24, `past_key_values` before)."""
    for name in CACHE_ARGUMENT_NAMES:
        value = getattr(output, name, None)
        if isinstance(value, Cache):
            return value
    return None


def cache_argument_name(model: torch.nn.Module) -> str:
    """The keyword the installed version's `model.forward` takes its cache under."""
    params = inspect.signature(model.forward).parameters
    name = next((n for n in CACHE_ARGUMENT_NAMES if n in params), None)
    if name is None:
        raise incompatible(f"{type(model).__name__}.forward takes none of {CACHE_ARGUMENT_NAMES}")
    return name


def with_cache(model: torch.nn.Module, cache: Cache | None) -> dict[str, Any]:
    """Keyword arguments that hand `cache` to `model`'s forward under the installed version's name."""
    return {cache_argument_name(model): cache}


def hidden_states(args: tuple, kwargs: dict) -> torch.Tensor:
    """A decoder layer's input hidden states: its first positional argument, or the keyword."""
    if args:
        return args[0]
    if HIDDEN_STATES not in kwargs:
        raise incompatible("a decoder layer was called without hidden states as its first argument")
    return kwargs[HIDDEN_STATES]


def replace_hidden_states(args: tuple, kwargs: dict, new: torch.Tensor) -> tuple[tuple, dict]:
    if args:
        return (new, *args[1:]), kwargs
    kwargs[HIDDEN_STATES] = new
    return args, kwargs


def input_ids(args: tuple, kwargs: dict) -> torch.Tensor | None:
    return kwargs.get(INPUT_IDS, args[0] if args else None)


def query_length(args: tuple, kwargs: dict) -> int:
    ids = input_ids(args, kwargs)
    if ids is not None:
        return int(ids.shape[1])
    embeds = kwargs.get(INPUTS_EMBEDS)
    if embeds is None:
        raise incompatible("a forward call carried neither input_ids nor inputs_embeds")
    return int(embeds.shape[1])


def continues_a_sequence(kwargs: Mapping[str, Any], q_len: int) -> bool:
    """Whether a call's own arguments show earlier tokens: a mask wider than the call, or positions past it.

    A fresh prompt's positions (left padding, M-RoPE rows included) stay below its length; a decode
    step's do not. generate drops an all-ones mask, so positions are the fact that always remains.
    """
    mask = kwargs.get(ATTENTION_MASK)
    if isinstance(mask, torch.Tensor) and mask.ndim == 2 and mask.shape[-1] > q_len:
        return True
    positions = kwargs.get(POSITION_IDS)
    return isinstance(positions, torch.Tensor) and positions.numel() > 0 and int(positions.max()) >= q_len


# ---- attention and mask registries -------------------------------------------------------------
_ATTENTION = AttentionInterface()
_MASKS = AttentionMaskInterface()


def attention_implementation(config: Any) -> str:
    """The attention implementation a (sub-)config selects; transformers' default is SDPA."""
    return getattr(config, "_attn_implementation", None) or "sdpa"


def is_registered_attention(name: str) -> bool:
    return name == "eager" or name in _ATTENTION


def attention_function(name: str, module: torch.nn.Module) -> Callable[..., Any]:
    """The function transformers would call for implementation `name` inside `module`."""
    if name == "eager":
        # Each model's eager kernel lives beside its attention class (softcapping, sinks, ...).
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise incompatible(f"{type(module).__module__} defines no eager_attention_forward")
        return fn
    return _ATTENTION[name]


def register_attention(name: str, fn: Callable[..., Any], masks_like: str) -> None:
    """Register `fn` as attention implementation `name`, building masks as `masks_like` does.

    Without a mask function under the new name transformers silently builds no padding mask.
    """
    AttentionInterface.register(name, fn)
    mask_fn = _MASKS.get(masks_like)
    if mask_fn is not None:
        AttentionMaskInterface.register(name, mask_fn)


def set_attention(model: torch.nn.Module, config_key: str, name: str) -> None:
    """Switch one sub-config (e.g. the text model's) of `model` to attention implementation `name`."""
    if not hasattr(model, "set_attn_implementation"):
        raise incompatible(f"{type(model).__name__} has no set_attn_implementation")
    model.set_attn_implementation({config_key: name})


def sub_config_key(config: Any, sub_config: Any) -> str | None:
    """The attribute name under which `config` holds `sub_config` (e.g. 'text_config')."""
    return next((k for k in getattr(config, "sub_configs", {}) if getattr(config, k, None) is sub_config), None)
