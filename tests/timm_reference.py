"""Import timm as a reference implementation (tests and benchmarks only, never at run time).

Every timm release imports torchvision (ops, transforms, datasets) when it is imported, and PyPI's
torchvision cannot load beside a CPU-only torch build. timm's ViT never calls into torchvision, so when the
real torchvision is unusable we serve a placeholder package whose every attribute is an inert class.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types


def _inert(name: str) -> type:
    return _InertMeta(name, (), {"__init__": lambda self, *args, **kwargs: None})


class _InertMeta(type):
    def __getattr__(cls, name):  # InterpolationMode.BICUBIC, transforms.Compose, ... (distinct per name)
        if name.startswith("__"):
            raise AttributeError(name)
        value = _inert(name)
        setattr(cls, name, value)
        return value

    def __hash__(cls):
        return id(cls)

    def __eq__(cls, other):
        return cls is other


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        value = _inert(name)
        setattr(self, name, value)
        return value


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        module = _PlaceholderModule(spec.name)
        module.__path__ = []
        return module

    def exec_module(self, module):
        pass


def import_timm():
    try:
        return importlib.import_module("timm")
    except (ImportError, RuntimeError) as e:  # RuntimeError: "operator torchvision::nms does not exist"
        if "torchvision" not in str(e):
            raise
    for name in [n for n in sys.modules if n.split(".")[0] in ("torchvision", "timm")]:
        del sys.modules[name]
    sys.meta_path.insert(0, _PlaceholderFinder())
    return importlib.import_module("timm")
