"""LoRA for the MimicTalk renderer.

* :mod:`.targets` -- which layers each upstream ``lora_mode`` adapts.
* :mod:`.official` -- the official (loralib-style) checkpoint layout and exact merging of it
  into base weights (no renderer import, so the loader can use it freely).
* :mod:`.layers` -- peft custom LoRA layers for the StyleGAN layers and the loralib-form conv.
* :mod:`.inject` -- ``inject_lora`` / ``lora_state_dict`` / ``load_lora_state_dict`` / ``merge_lora``.

peft's custom-layer hook (``LoraConfig._register_custom_module``) is private, experimental and
not saved with an adapter, so :func:`register_custom_layers` is called on every injection and
every load.
"""

from .targets import DEFAULT_LORA_MODE, DEFAULT_LORA_R, LORA_MODES, parse_lora_mode  # noqa: F401


def register_custom_layers(config, conv_lora: str = "upstream"):
    """Register the custom LoRA layers on a peft ``LoraConfig`` (see :mod:`.layers`)."""
    from .layers import register_custom_layers as _register

    return _register(config, conv_lora=conv_lora)
