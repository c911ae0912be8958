"""LoRA for the MimicTalk renderer.

* which layers each upstream ``lora_mode`` adapts (``renderer.lora_targets``) and the official
  (loralib-style) checkpoint layout with its exact merging (``renderer.official_lora``) belong to
  the renderer, which loads official checkpoints: ``lora/`` (the peft side) sits above
  ``renderer/`` and the renderer never imports it. ``.targets`` / ``.official`` re-export them.
* :mod:`.layers` -- peft custom LoRA layers for the StyleGAN layers and the loralib-form conv.
* :mod:`.inject` -- ``inject_lora`` / ``lora_state_dict`` / ``load_lora_state_dict`` / ``merge_lora``.

peft's custom-layer hook (``LoraConfig._register_custom_module``) is private, experimental and
not saved with an adapter, so :func:`register_custom_layers` is called on every injection and
every load.
"""

from ..renderer.lora_targets import DEFAULT_LORA_MODE, DEFAULT_LORA_R, LORA_MODES, parse_lora_mode  # noqa: F401


def register_custom_layers(config, conv_lora: str = "upstream"):
    """Register the custom LoRA layers on a peft ``LoraConfig`` (see :mod:`.layers`)."""
    from .layers import register_custom_layers as _register

    return _register(config, conv_lora=conv_lora)
