"""peft custom LoRA layers for the MimicTalk renderer, parametrised exactly like upstream.

MimicTalk's LoRA (architecture reference §3.3) is loralib-style, not peft: a k x k convolution
gets ``A (r*k, in*k)`` and ``B (out*k, r*k)`` with ``dW = (B @ A).view(out, in, k, k) / r``, a
fully connected layer ``A (r, in)``, ``B (out, r)``, ``dW = B @ A / r`` (``lora_alpha`` = 1).
peft's own Conv2d LoRA (``A: Conv2d(in, r, k)``, ``B: Conv2d(r, out, 1)``) cannot represent
that, and peft knows nothing of the StyleGAN layers, so each layer here is a peft
``LoraLayer`` (``nn.Module`` + ``LoraLayer``, ``lora_A``/``lora_B`` ``ModuleDict``s keyed by
adapter name) whose adapter matrices are bias-free ``nn.Linear`` modules holding *exactly* the
upstream matrices (``lora_A[name].weight`` is upstream's ``lora_A``). An official checkpoint
therefore imports losslessly, and r=2 on ``secc2plane_sr`` gives upstream's 91 108 parameters.

Where dW enters (upstream ``networks_stylegan2.py``; the renderer layers' ``delta_weight`` hook
implements it):

* :class:`LoraFullyConnected` (StyleGAN ``FullyConnectedLayer``, e.g. a style ``affine``) and
  :class:`LoraStyleConv2d` (StyleGAN ``Conv2dLayer``, the SegFormer ``prenet``): *after* the
  equalized-lr gain, ``W * gain + dW``; merging into the raw weight therefore adds ``dW / gain``.
* :class:`LoraSynthesis` (``SynthesisLayer``) and :class:`LoraToRGB` (``ToRGBLayer``): to the
  raw weight, before modulation / demodulation. Upstream zero-initialises *both* torgb matrices,
  so that LoRA never trains; :class:`LoraToRGB` does the same.
* :class:`LoraConv2dLoralib` (plain ``nn.Conv2d``, ``to_plane_cnn``): ``conv(x, W + dW, b)`` as
  loralib's ``ConvLoRA``.

Initialisation follows upstream (= loralib, = peft's default): ``A`` Kaiming-uniform with
``a = sqrt(5)``, ``B`` zero, so a fresh adapter is the identity.

peft's custom-layer hook, ``LoraConfig._register_custom_module``, is private and experimental and
is not saved with an adapter: :func:`register_custom_layers` must be called on every config, when
training and when loading (``lora.inject`` does this).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
from peft import LoraConfig
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import check_adapters_to_merge
from torch import nn

from ..errors import InputError
from ..renderer.stylegan import Conv2dLayer, FullyConnectedLayer, SynthesisLayer, ToRGBLayer
from ..renderer.lora_targets import check_rank

CONV_LORA_FORMS = ("upstream", "peft")
"""How plain ``nn.Conv2d`` targets (``to_plane_cnn``) are adapted: ``'upstream'`` = loralib's
``(r*k, in*k)``/``(out*k, r*k)`` form (official checkpoints, the default), ``'peft'`` = peft's
native Conv2d LoRA (``Conv2d(in, r, k)`` then ``Conv2d(r, out, 1)``)."""


class _OfficialFormLora(nn.Module, LoraLayer):
    """Shared machinery: one weight ``W`` (2-D or 4-D) and official-form ``A``/``B`` per adapter.

    Subclasses set ``merge_gain_attr`` (the base layer's equalized-lr gain attribute, or None
    when dW is added to the raw weight) and implement ``forward``.
    """

    adapter_layer_names = ("lora_A", "lora_B")
    merge_gain_attr: Optional[str] = None
    zero_init_a = False  # torgb: upstream leaves A at zero as well

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config: Optional[LoraConfig] = None,
        r: int = 2,
        lora_alpha: float = 1.0,
        **kwargs: Any,
    ) -> None:
        nn.Module.__init__(self)
        with warnings.catch_warnings():  # older peft (0.13) warns about every custom base layer type
            warnings.filterwarnings("ignore", message="Unsupported layer type")
            LoraLayer.__init__(self, base_layer)
        self.in_features, self.out_features = self._get_in_out_features(base_layer)
        if config is not None and config.lora_dropout:
            raise InputError(f"LoRA dropout is not supported on the renderer's layers (got {config.lora_dropout}); use 0")
        self._active_adapter = adapter_name
        init = True if config is None else config.init_lora_weights
        self.update_layer(adapter_name, r, lora_alpha=lora_alpha, init_lora_weights=init)

    def _get_in_out_features(self, module: nn.Module) -> tuple[int, int]:
        return module.weight.shape[1], module.weight.shape[0]

    @property
    def kernel_size(self) -> int:
        w = self.get_base_layer().weight
        return 1 if w.dim() == 2 else w.shape[-1]

    def update_layer(
        self, adapter_name: str, r: int, lora_alpha: float = 1.0, init_lora_weights: Any = True, config=None, **kwargs
    ) -> None:
        check_rank(r)
        if config is not None:
            init_lora_weights = config.init_lora_weights
        w = self.get_base_layer().weight
        k = self.kernel_size
        out_c, in_c = w.shape[0], w.shape[1]
        # official shapes: A.weight (r*k, in*k), B.weight (out*k, r*k)
        self.lora_A[adapter_name] = nn.Linear(in_c * k, r * k, bias=False, device=w.device, dtype=torch.float32)
        self.lora_B[adapter_name] = nn.Linear(r * k, out_c * k, bias=False, device=w.device, dtype=torch.float32)
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = lora_alpha
        self.scaling[adapter_name] = lora_alpha / r
        self.lora_dropout[adapter_name] = nn.Identity()
        self.use_dora[adapter_name] = False
        if init_lora_weights is not False:  # False = leave both random (peft convention; tests)
            self.reset_lora_parameters(adapter_name, init_lora_weights)
        self.set_adapter(self.active_adapters)

    def reset_lora_parameters(self, adapter_name: str, init_lora_weights: Any = True) -> None:
        if adapter_name not in self.lora_A:
            return
        if self.zero_init_a:
            nn.init.zeros_(self.lora_A[adapter_name].weight)
        else:  # upstream / loralib: kaiming_uniform_(A, a=sqrt(5)); B = 0
            nn.init.kaiming_uniform_(self.lora_A[adapter_name].weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B[adapter_name].weight)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``dW`` as the layer's forward adds it: ``(B @ A).view(W.shape) * alpha / r``."""
        a = self.lora_A[adapter_name].weight
        b = self.lora_B[adapter_name].weight
        shape = self.get_base_layer().weight.shape
        # [out*k, r*k] @ [r*k, in*k] -> [out*k, in*k] -> (row-major) [out, in, k, k] (or [out, in])
        return (b @ a).reshape(shape) * self.scaling[adapter_name]

    def _merge_gain(self) -> float:
        return 1.0 if self.merge_gain_attr is None else float(getattr(self.get_base_layer(), self.merge_gain_attr))

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The change of the *stored raw* weight equivalent to the adapter (peft's merge convention)."""
        return self.delta_weight(adapter_name) / self._merge_gain()

    def _active_delta(self) -> Optional[torch.Tensor]:
        """Sum of dW over the active, unmerged adapters (None if there is none), in the base
        weight's dtype (the adapter matrices stay fp32 when the renderer runs in bf16/fp16)."""
        delta = None
        for name in self.active_adapters:
            if name in self.lora_A and name not in self.merged_adapters:
                d = self.delta_weight(name)
                delta = d if delta is None else delta + d
        return None if delta is None else delta.to(self.get_base_layer().weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        """Fold the adapters into the base layer's raw weight (in float64, cast back)."""
        weight = self.get_base_layer().weight
        for name in check_adapters_to_merge(self, adapter_names):
            if name not in self.lora_A:
                continue
            merged = weight.data.double() + self.get_delta_weight(name).detach().double()
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"NaNs or infs detected while merging LoRA adapter {name!r}")
            weight.data.copy_(merged.to(weight.dtype))
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        weight = self.get_base_layer().weight
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.lora_A:
                weight.data.copy_((weight.data.double() - self.get_delta_weight(name).detach().double()).to(weight.dtype))

    def _run_base(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return self.base_layer(*args, **kwargs)
        return self.base_layer(*args, delta_weight=self._active_delta(), **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self._run_base(*args, **kwargs)

    def __repr__(self) -> str:
        return "lora." + super().__repr__()


class LoraFullyConnected(_OfficialFormLora):
    """LoRA on a StyleGAN ``FullyConnectedLayer``: ``x @ (W * gain + B @ A / r).T + b``."""

    merge_gain_attr = "weight_gain"


class LoraStyleConv2d(_OfficialFormLora):
    """LoRA on a StyleGAN ``Conv2dLayer`` (the SegFormer ``prenet``): ``W * gain + dW``."""

    merge_gain_attr = "weight_gain"


class LoraSynthesis(_OfficialFormLora):
    """LoRA on a ``SynthesisLayer``: dW on the raw weight, before modulation/demodulation.
    Its style ``affine`` is a separate target (:class:`LoraFullyConnected`)."""


class LoraToRGB(_OfficialFormLora):
    """LoRA on a ``ToRGBLayer``: dW on the raw weight. Upstream initialises A and B to zero,
    so neither ever gets a gradient and the adapter stays exactly zero."""

    zero_init_a = True


class LoraConv2dLoralib(_OfficialFormLora):
    """loralib ``ConvLoRA`` on a plain ``nn.Conv2d``: ``conv(x, W + dW, b)``."""

    def update_layer(self, adapter_name: str, r: int, *args: Any, **kwargs: Any) -> None:
        base = self.get_base_layer()
        if base.groups != 1 or base.kernel_size[0] != base.kernel_size[1]:
            raise InputError(
                f"loralib-form conv LoRA needs groups=1 and a square kernel, got groups={base.groups}, "
                f"kernel {base.kernel_size}; use conv_lora='peft' for this layer"
            )
        super().update_layer(adapter_name, r, *args, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        base = self.get_base_layer()
        if self.disable_adapters and self.merged:
            self.unmerge()
        delta = None if self.disable_adapters else self._active_delta()
        if delta is None:
            return base(x, *args, **kwargs)
        weight = base.weight + delta
        return base._conv_forward(x, weight.to(x.dtype), None if base.bias is None else base.bias.to(x.dtype))


CUSTOM_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    FullyConnectedLayer: LoraFullyConnected,
    Conv2dLayer: LoraStyleConv2d,
    SynthesisLayer: LoraSynthesis,
    ToRGBLayer: LoraToRGB,
}
"""StyleGAN layer type -> its peft custom LoRA layer."""


def register_custom_layers(config: LoraConfig, conv_lora: str = "upstream") -> LoraConfig:
    """Register the custom layers on ``config`` (peft's private ``_register_custom_module``).

    Must be called on every config, for training and for loading: the registration is not saved
    with an adapter. With ``conv_lora='upstream'`` plain ``nn.Conv2d`` targets get the loralib
    form; with ``'peft'`` they keep peft's native Conv2d LoRA.
    """
    if conv_lora not in CONV_LORA_FORMS:
        raise InputError(f"conv_lora must be one of {CONV_LORA_FORMS}, got {conv_lora!r}")
    hook = getattr(config, "_register_custom_module", None)
    if hook is None:  # the private API went away: a peft release this pack does not support
        raise InputError(
            "the installed peft has no LoraConfig._register_custom_module (custom LoRA layers), which this pack "
            "needs; install a peft release it was tested with (0.13.2 to 0.21.2), e.g. pip install 'peft>=0.13,<0.22'"
        )
    mapping: dict[type[nn.Module], type[nn.Module]] = dict(CUSTOM_LAYERS)
    if conv_lora == "upstream":
        mapping[nn.Conv2d] = LoraConv2dLoralib
    hook(mapping)
    return config


__all__ = [
    "CONV_LORA_FORMS",
    "CUSTOM_LAYERS",
    "LoraConv2dLoralib",
    "LoraFullyConnected",
    "LoraStyleConv2d",
    "LoraSynthesis",
    "LoraToRGB",
    "register_custom_layers",
]
