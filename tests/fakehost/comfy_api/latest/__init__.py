"""Fake ``comfy_api.latest``: the pack's own standalone V3 subset (``nodes/v3api.py``, loaded by
file location) stands in for ComfyUI's ``io`` / ``ui`` / ``ComfyExtension``, plus ``InputImpl``.

Reusing it keeps one stand-in of the V3 API instead of two; fidelity to the real API is what the
real-ComfyUI end-to-end test (``tests/e2e``) checks.
"""

import importlib.util
import os
import sys
from types import SimpleNamespace

_V3API = os.path.join(os.path.dirname(os.path.abspath(__file__)), *[os.pardir] * 4, "nodes", "v3api.py")
_spec = importlib.util.spec_from_file_location("fakehost_v3api", os.path.normpath(_V3API))
_v3 = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = _v3
_spec.loader.exec_module(_v3)

io, ui, ComfyExtension = _v3.io, _v3.ui, _v3.ComfyExtension
InputImpl = SimpleNamespace(VideoFromFile=_v3.VideoFromFile)
