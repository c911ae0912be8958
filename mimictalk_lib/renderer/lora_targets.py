"""Which renderer layers carry LoRA, per MimicTalk ``lora_mode``.

Upstream (MimicTalk ``secc_img2plane.py``, ``secc_img2plane_torso.py``, ``img2plane_baseline.py``)
passes ``lora_args`` to a sub-network when the mode string is ``'all'`` or contains the
sub-network's tag: ``'secc2plane'`` (the SegFormer motion adapter: ``prenet`` and the four
convolutions of ``to_plane_cnn``), ``'sr'`` (the modulated convolutions of the super-resolution
blocks, their style affines, and the ``torgb`` of ``block0``/``block1``) and ``'decoder'`` (the
two layers of the tri-plane MLP). The shipped personalised checkpoints use ``'secc2plane_sr'``
(architecture reference §2.6, §3.1). ``'none'`` trains the tri-grid alone.

Module paths below are relative to the renderer root and equal the upstream checkpoint
prefixes, e.g. ``superresolution.block0.conv0.affine``.
"""

from __future__ import annotations

import re
from typing import Iterable

from ..errors import InputError

PARTS = ("secc2plane", "sr", "decoder")
"""LoRA-capable sub-networks, in the order upstream's mode strings name them."""

LORA_MODES = ("none", "secc2plane", "sr", "decoder", "secc2plane_sr", "all")
"""Mode strings accepted everywhere (the upstream CLI default is ``secc2plane_sr``)."""

DEFAULT_LORA_MODE = "secc2plane_sr"
DEFAULT_LORA_R = 2
LORA_ALPHA = 1.0
"""Upstream fixes ``lora_alpha = 1`` in every LoRA layer, so the scale is ``1 / r``."""

_PART_PATTERNS: dict[str, tuple[str, ...]] = {
    "secc2plane": (
        r"secc_img2plane_backbone\.prenet",  # StyleGAN Conv2dLayer 9->3, 1x1
        r"secc_img2plane_backbone\.to_plane_cnn\.\d+",  # plain nn.Conv2d (loralib LoRAConv2d upstream)
    ),
    "sr": (
        r"superresolution\.(?:block0|block1|head_torso_block)\.conv[01]",  # SynthesisLayer
        r"superresolution\.(?:block0|block1|head_torso_block)\.conv[01]\.affine",  # its style FC
        r"superresolution\.(?:block0|block1)\.torgb",  # ToRGBLayer (its affine carries no LoRA)
    ),
    "decoder": (r"decoder\.net\.\d+",),  # StyleGAN FullyConnectedLayer
}
_PART_RES = {part: re.compile("^(?:" + "|".join(p) + ")$") for part, p in _PART_PATTERNS.items()}


def parse_lora_mode(mode: str) -> frozenset[str]:
    """The sub-networks (subset of :data:`PARTS`) that ``mode`` adapts, with upstream semantics:
    ``'all'`` selects every part, otherwise each part whose tag is a substring of ``mode``."""
    if mode not in LORA_MODES:
        raise InputError(
            f"lora_mode {mode!r} is not supported; use one of {', '.join(LORA_MODES)} "
            f"(upstream default {DEFAULT_LORA_MODE!r})"
        )
    if mode == "all":
        return frozenset(PARTS)
    return frozenset(p for p in PARTS if p in mode)


def mode_from_parts(parts: Iterable[str]) -> str:
    """Inverse of :func:`parse_lora_mode`: the canonical mode string naming ``parts``."""
    parts = set(parts)
    if parts == set(PARTS):
        return "all"
    if not parts:
        return "none"
    return "_".join(p for p in PARTS if p in parts)


def part_of(module_path: str) -> str | None:
    """The LoRA part a module path belongs to, or None if upstream never puts LoRA there."""
    for part, rx in _PART_RES.items():
        if rx.match(module_path):
            return part
    return None


def check_rank(r: int) -> int:
    """Validate a LoRA rank (positive int)."""
    if isinstance(r, bool) or not isinstance(r, int) or r <= 0:
        raise InputError(f"LoRA rank r must be a positive integer, got {r!r}; upstream uses r=2")
    return r
