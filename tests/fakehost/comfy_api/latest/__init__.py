"""Fake ``comfy_api.latest``: ``io`` / ``ui`` / ``ComfyExtension`` / ``InputImpl`` of the fake
host's V3 API stand-in (``_v3.py``); fidelity to the real API is what the real-ComfyUI end-to-end
test (``tests/e2e``) checks."""

from types import SimpleNamespace

from ._v3 import ComfyExtension, VideoFromFile, io, ui

InputImpl = SimpleNamespace(VideoFromFile=VideoFromFile)

__all__ = ["ComfyExtension", "InputImpl", "io", "ui"]
