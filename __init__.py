"""MimicTalk for ComfyUI: personalised 3D talking heads (MimicTalk, NeurIPS 2024) and one-shot
talking portraits (Real3D-Portrait, ICLR 2024), reimplemented in pure PyTorch.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint`` (V3 node API). Importing
it only registers the ``mimictalk`` model folder (``models/mimictalk``, extendable with the
``mimictalk:`` key of extra_model_paths.yaml): no downloads, no sys.path edits, no global torch
or logging settings. Outside ComfyUI it imports without doing anything.
"""

from .nodes import host as _host

if _host.HOSTED:
    _host.register_model_folders()

    async def comfy_entrypoint():
        """V3 entry point: the MimicTalk extension (its node list is ``nodes.NODE_LIST``)."""
        from .nodes import MimicTalkExtension

        return MimicTalkExtension()

elif _host.IN_COMFYUI:
    _host.logger.warning(_host.missing_api_message())
