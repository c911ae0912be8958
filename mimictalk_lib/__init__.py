"""MimicTalk / Real3D-Portrait talking-head library in pure PyTorch.

A clean-room reimplementation that loads the official checkpoints. It imports nothing from
ComfyUI and is usable from a plain script; the ComfyUI nodes in ``nodes/`` are thin adapters
over it. Sub-packages are imported lazily by the caller (``from mimictalk_lib.renderer import
...``) so that importing this package stays cheap.
"""

__version__ = "0.1.0"
