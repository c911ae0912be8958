"""MimicTalk for ComfyUI: personalised 3D talking heads (MimicTalk, NeurIPS 2024) and one-shot
talking portraits (Real3D-Portrait, ICLR 2024), reimplemented in pure PyTorch.

ComfyUI imports this folder as a package and calls ``comfy_entrypoint`` (V3 node API). Importing
it only registers the ``mimictalk`` model folder (``models/mimictalk``, extendable with the
``mimictalk:`` key of extra_model_paths.yaml): no downloads, no sys.path edits, no global torch
or logging settings. Outside ComfyUI it imports without doing anything.
"""

if __package__:  # ComfyUI imports the folder as a package; a plain-file import (pytest collecting a
    from .nodes import host as _host  # checkout whose folder name is no identifier) has nothing to register
else:
    _host = None

if _host is not None and _host.HOSTED:
    _host.register_model_folders()

    async def comfy_entrypoint():
        """V3 entry point: the MimicTalk extension (its node list is ``nodes.NODE_LIST``)."""
        from .nodes import MimicTalkExtension

        return MimicTalkExtension()

elif _host is not None and _host.IN_COMFYUI:
    _host.logger.warning(_host.missing_api_message())
