"""Test-environment shim: let the registry's CUDA torchvision wheel import beside CPU torch.

Only `tests_serving/setup_venv.sh` installs this (into the serving test venv, as a .pth hook); fastv
itself never imports it, and a normal machine (`pip install vllm` with matching torch and
torchvision builds) needs nothing of it.

Why: the package registry offers torchvision 0.28 only as a CUDA build. Beside CPU torch its C++
ops library fails to load (it links libtorch_cuda), which torchvision tolerates, but its
`_meta_registrations` then registers fake kernels for `torchvision::nms`/`qnms` unconditionally and
fails with "operator torchvision::nms does not exist", so `import torchvision` fails, and with it
transformers' processors and vLLM's LLaVA (which imports `torchvision.transforms.v2`). The pure
Python parts that they use need no C++ ops. This hook defines the two op schemas (no kernels)
right before that module runs, only when the ops library did not load; calling them would still
fail loudly.
"""

from __future__ import annotations

import importlib.abc
import sys

_LIBRARY = None  # the torch.library.Library that holds the schemas; kept alive for the process


class _BeforeMetaRegistrations(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision._meta_registrations":
            sys.meta_path.remove(self)
            _define_missing_ops()
        return None  # the normal finders import the module itself


def _define_missing_ops() -> None:
    global _LIBRARY
    import torch
    from torchvision import extension

    if extension._has_ops():
        return  # a working torchvision build: nothing to do
    for op in ("nms", "qnms"):
        if _has_schema(f"torchvision::{op}"):
            continue
        if _LIBRARY is None:
            _LIBRARY = torch.library.Library("torchvision", "FRAGMENT")
        _LIBRARY.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


def _has_schema(name: str) -> bool:
    import torch

    try:
        torch._C._get_schema(name, "")
    except RuntimeError:
        return False
    return True


def install() -> None:
    sys.meta_path.insert(0, _BeforeMetaRegistrations())
