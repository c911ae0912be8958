"""Moved to :mod:`mimictalk_lib.renderer.lora_targets` (the renderer owns its LoRA targets); this
name stays for code written before the move."""

from ..renderer.lora_targets import *  # noqa: F401,F403
