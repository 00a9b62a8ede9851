"""The transformers compatibility layer: found by type, refused when unrecognisable, a declared range.

The failure these tests guard against shipped once: transformers 5.24 renamed the models'
`past_key_values` argument to `cache`, fastv read the old name, got None at every decode step and
silently treated each step as a new prefill.
"""

from __future__ import annotations

import gc
import json
import re
import subprocess
import sys
import warnings
import weakref
from pathlib import Path

import pytest
import torch
import transformers
from tiny_llava import batch, prompt, tiny_llava
from transformers.cache_utils import Cache, DynamicCache

from fastv import FastV, FastVError
from fastv.core.hf import compat
from fastv.core.hf.compat import CompatibilityError

ROOT = Path(__file__).resolve().parents[1]


def test_cache_is_found_by_type_under_any_name():
    cache = DynamicCache()
    assert compat.find_cache({"kv_cache_of_2099": cache, "use_cache": True}) is cache
    assert compat.find_cache({}, (torch.zeros(1), cache)) is cache
    assert compat.find_cache({"cache": None, "past_key_values": None}) is None


def test_a_cache_that_is_not_a_cache_object_is_refused():
    legacy = ((torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4)),)
    with pytest.raises(CompatibilityError, match="legacy tuple caches"):
        compat.find_cache({"past_key_values": legacy})
    with pytest.raises(CompatibilityError, match="two KV cache objects"):
        compat.find_cache({"a": DynamicCache(), "b": DynamicCache()})


def test_cache_argument_name_follows_the_installed_forward():
    model = tiny_llava()
    name = compat.cache_argument_name(model)
    assert name in compat.CACHE_ARGUMENT_NAMES
    out = model(**batch([prompt(3, 4)]), use_cache=True)
    assert isinstance(compat.output_cache(out), Cache)


def _hide_cache(module, args, kwargs):
    """Simulate a release that hands the cache over in a form fastv does not recognise."""
    for name, value in list(kwargs.items()):
        if isinstance(value, Cache):
            del kwargs[name]
            kwargs["kv_state"] = (value,)
    return args, kwargs


def test_an_unrecognisable_cache_argument_raises_instead_of_a_wrong_answer():
    model, inputs = tiny_llava(), batch([prompt(4, 6)])
    with FastV(k=2, ratio=0.5).apply(model):
        model.register_forward_pre_hook(_hide_cache, with_kwargs=True, prepend=True)
        with pytest.raises(CompatibilityError) as err:
            model.generate(**inputs, max_new_tokens=3, do_sample=False)
    message = str(err.value)
    assert f"transformers {transformers.__version__}" in message
    assert compat.OLDEST_TESTED in message and compat.NEWEST_TESTED in message
    assert "no KV cache object fastv can find" in message


def test_visual_tokens_added_to_a_filled_cache_are_refused():
    model, inputs = tiny_llava(), batch([prompt(4, 6)])
    with FastV(k=2).apply(model):
        out = model(**inputs, use_cache=True)
        more = batch([prompt(2, 3, seed=1)])
        mask = torch.cat([inputs["attention_mask"], more["attention_mask"]], dim=1)
        cache = compat.with_cache(model, compat.output_cache(out))
        with pytest.raises(FastVError, match="adds visual tokens to a cache"):
            model(input_ids=more["input_ids"], pixel_values=more["pixel_values"], attention_mask=mask, **cache)


def test_a_handle_never_removed_does_not_keep_its_model_alive():
    model = tiny_llava()
    handle = FastV(k=2).apply(model)
    model(**batch([prompt(3, 4)]))
    ref = weakref.ref(model)
    del model, handle
    gc.collect()
    assert ref() is None


def test_pyproject_declares_the_tested_range():
    spec = re.search(r'"(transformers[^"]*)"', (ROOT / "pyproject.toml").read_text()).group(1)
    assert spec == f"transformers>={compat.OLDEST_TESTED},<{compat.UPPER_BOUND}"
    assert compat.in_tested_range(compat.OLDEST_TESTED) and compat.in_tested_range(compat.NEWEST_TESTED)
    assert not compat.in_tested_range(compat.UPPER_BOUND + ".0")


def test_import_warns_once_outside_the_range(monkeypatch):
    compat.warn_if_untested.cache_clear()
    monkeypatch.setattr(compat, "installed_version", lambda: "9.0.0")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert compat.warn_if_untested() is True
        compat.warn_if_untested()
    assert len(seen) == 1 and "9.0.0" in str(seen[0].message) and compat.tested_range() in str(seen[0].message)
    compat.warn_if_untested.cache_clear()
    monkeypatch.setattr(compat, "installed_version", lambda: compat.NEWEST_TESTED)
    assert compat.warn_if_untested() is False
    compat.warn_if_untested.cache_clear()


def test_the_readme_first_command_prunes():
    """The README's first command, as a user runs it: a real kept count and shorter layers after K."""
    readme = (ROOT / "README.md").read_text()
    command = re.search(r"&& (fastv generate [^\n]+)", readme).group(1)
    args = command.split()[1:]
    args = [a.strip('"') for a in re.findall(r'"[^"]*"|\S+', " ".join(args))]
    args = [str(ROOT / a) if a.endswith(".png") else a for a in args]
    res = subprocess.run(
        [sys.executable, "-m", "fastv", *args, "--json"], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    total, kept, lens = out["visual_total"], out["visual_kept"], out["layer_seq_lens"]
    assert total > 0 and kept == total - round(0.5 * total)  # the default R = 50%
    k = 2
    assert lens[:k] == [lens[0]] * k
    assert lens[k:] == [lens[0] - (total - kept)] * (len(lens) - k)
    assert out["answer"].strip()
