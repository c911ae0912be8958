"""ComfyUI V3 nodes of the MimicTalk pack: thin adapters (validate -> one library call -> wrap
the outputs) over ``mimictalk_lib``. Everything host-specific goes through ``nodes.host``.

Node modules add their ``io.ComfyNode`` classes to ``NODE_LIST``; the extension returned by the
pack's ``comfy_entrypoint`` serves that list.
"""

from __future__ import annotations

from . import host

NODE_LIST: list[type] = []
"""Every node class the extension registers (node ids prefixed ``MimicTalk``)."""


if host.V3_AVAILABLE:

    class MimicTalkExtension(host.ComfyExtension):
        """The pack's V3 extension: no global state to set up, just the node list."""

        async def on_load(self) -> None:
            return None

        async def get_node_list(self) -> list[type]:
            return list(NODE_LIST)

else:
    MimicTalkExtension = None
