"""Moved to :mod:`mimictalk_lib.renderer.official_lora` (the renderer owns the official LoRA
layout it loads); this name stays for code written before the move."""

from ..renderer.official_lora import *  # noqa: F401,F403
