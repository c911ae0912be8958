"""Fake ``comfy_api.latest``: the V3 extension base class and minimal ``io`` / ``ui`` modules."""

from abc import ABC, abstractmethod

from . import io, ui  # noqa: F401  (re-exported like the real API)


class ComfyExtension(ABC):
    async def on_load(self) -> None:
        """Called when the extension is loaded."""

    @abstractmethod
    async def get_node_list(self) -> list:
        """The node classes this extension provides."""
