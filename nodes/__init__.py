"""ComfyUI V3 nodes of the MimicTalk pack: thin adapters (validate -> one library call -> wrap
the outputs) over ``mimictalk_lib``. Everything host-specific goes through ``nodes.host``.

Node modules by role: ``loaders`` (renderer, face model, audio-to-motion), ``identity``,
``train``, ``adapters`` (save / load / apply), ``motion``, ``render``, ``video`` (load audio,
video combine), ``evaluate``, ``dub``. ``NODE_LIST`` is what the extension returned by the pack's
``comfy_entrypoint`` serves. Without a ComfyUI that can host them (``host.HOSTED`` false) the node
modules are not imported: scripts and ``python -m mimictalk_lib`` use the library directly.
"""

from __future__ import annotations

from . import host

if host.HOSTED:
    from . import adapters, dub, evaluate, identity, loaders, motion, render, train, video

    NODE_LIST: list[type] = [
        *loaders.NODES, *identity.NODES, *train.NODES, *adapters.NODES, *motion.NODES, *render.NODES, *video.NODES,
        *evaluate.NODES, *dub.NODES,
    ]
    """Every node class the extension registers (node ids prefixed ``MimicTalk``)."""

    class MimicTalkExtension(host.ComfyExtension):
        """The pack's V3 extension: no global state to set up, just the node list."""

        async def on_load(self) -> None:
            return None

        async def get_node_list(self) -> list[type]:
            return list(NODE_LIST)
