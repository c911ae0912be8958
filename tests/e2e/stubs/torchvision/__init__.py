"""Test-only stand-in for ``torchvision`` (comfyui_conventions.md §6.3): ComfyUI imports it at
start-up, and the only torchvision wheel on PyPI links CUDA and fails to import next to CPU torch.
Every ``torchvision.*`` submodule and attribute is an empty stub module, so imports succeed
(ComfyUI's, and transformers' when it sees torchvision "installed") and any real use fails
loudly (a module is not callable). Never shipped or installed."""

import importlib
import importlib.abc
import importlib.util
import sys
import types

__version__ = "0.0.0"


class _Stub(types.ModuleType):
    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return importlib.import_module(f"{self.__name__}.{name}")


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        return importlib.util.spec_from_loader(name, self, is_package=True) if name.startswith(__name__ + ".") else None

    def create_module(self, spec):
        return _Stub(spec.name)

    def exec_module(self, module):
        module.__path__ = []


sys.meta_path.insert(0, _Finder())
