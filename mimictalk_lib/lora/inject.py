"""Putting LoRA on a renderer through peft, and taking it off again.

``inject_lora(renderer, mode, r)`` returns a *new* personalised module: the module tree is
copied, every base parameter of the copy is a new ``nn.Parameter`` sharing the base tensor's
storage (no memory is duplicated, and nothing the copy does to ``requires_grad`` reaches the
base), buffers are cloned (BatchNorm statistics may move while training), and the LoRA layers
are injected with ``peft.inject_adapter_in_model`` using the custom layers of
:mod:`.layers`. Base weights are never written in place, so the base renderer stays
bit-identical; :func:`merge_lora` likewise builds new merged weights.

LoRA tensors are exchanged in the official naming: ``<module path>.lora_A`` / ``.lora_B`` with
the module path of the *base* renderer (e.g. ``superresolution.block0.conv0.affine.lora_A``).
For the official-form layers these are exactly upstream's matrices; for peft-native conv LoRA
(``conv_lora='peft'``) they are peft's ``A: [r, in, k, k]`` and ``B: [out, r, 1, 1]``.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import asdict, dataclass
from typing import Mapping

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora.layer import LoraLayer
from torch import nn

from ..errors import CheckpointError, InputError
from ..renderer.stylegan import Conv2dLayer, FullyConnectedLayer, SynthesisLayer, ToRGBLayer
from .layers import CONV_LORA_FORMS, register_custom_layers
from ..renderer.lora_targets import DEFAULT_LORA_MODE, DEFAULT_LORA_R, LORA_ALPHA, check_rank, parse_lora_mode, part_of

ADAPTER_NAME = "default"
_LORA_ABLE = (FullyConnectedLayer, Conv2dLayer, SynthesisLayer, ToRGBLayer, nn.Conv2d)
_BASE_LAYER = ".base_layer"


@dataclass(frozen=True)
class LoraSpec:
    """What LoRA a personalised renderer carries (recorded in adapter metadata)."""

    lora_mode: str = DEFAULT_LORA_MODE  # upstream mode string (secc2plane / sr / secc2plane_sr / all ...)
    r: int = DEFAULT_LORA_R  # rank; lora_alpha is fixed at 1 (scale 1/r) as upstream
    conv_lora: str = "upstream"  # plain nn.Conv2d targets: 'upstream' (loralib form) or 'peft' (native)

    def __post_init__(self) -> None:
        parse_lora_mode(self.lora_mode)
        check_rank(self.r)
        if self.conv_lora not in CONV_LORA_FORMS:
            raise InputError(f"conv_lora must be one of {CONV_LORA_FORMS}, got {self.conv_lora!r}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "LoraSpec":
        return cls(lora_mode=str(d["lora_mode"]), r=int(d["r"]), conv_lora=str(d.get("conv_lora", "upstream")))


def lora_targets(model: nn.Module, lora_mode: str) -> list[str]:
    """Module paths of ``model`` that upstream adapts in ``lora_mode`` (present layers only)."""
    parts = parse_lora_mode(lora_mode)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, _LORA_ABLE) and part_of(name) in parts
    ]


def share_copy(model: nn.Module, *, trainable: bool = False) -> nn.Module:
    """A new module tree whose parameters are new ``nn.Parameter`` objects over the *same*
    storage as ``model``'s (zero-copy) and whose buffers are cloned.

    With ``trainable=True``, parameters created under ``torch.inference_mode`` (a host that loads
    models in inference mode) are cloned into normal tensors: autograd cannot use them otherwise.
    """
    memo: dict[int, object] = {}
    with torch.inference_mode(False):
        for p in model.parameters():
            t = p.detach()
            t = t.clone() if trainable and t.is_inference() else t
            # an inference tensor cannot require grad outside inference mode (inference-only copy)
            memo[id(p)] = nn.Parameter(t, requires_grad=p.requires_grad and not t.is_inference())
        for b in model.buffers():
            memo[id(b)] = b.detach().clone()
        return copy.deepcopy(model, memo)


def _nesting_levels(targets: list[str]) -> list[list[str]]:
    """Group targets so that a target nested inside another (a SynthesisLayer's ``affine``) is
    injected first: peft cannot find ``conv0.affine`` once ``conv0`` is wrapped."""
    depth = {t: sum(t.startswith(o + ".") for o in targets) for t in targets}
    return [[t for t in targets if depth[t] == d] for d in sorted(set(depth.values()), reverse=True)]


def _config(spec: LoraSpec, targets: list[str], init_lora_weights: bool) -> LoraConfig:
    config = LoraConfig(
        r=spec.r,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=targets,
        init_lora_weights=init_lora_weights,
        bias="none",
    )
    # the private hook is not saved with an adapter: register on every config (training and loading)
    return register_custom_layers(config, conv_lora=spec.conv_lora)


def inject_lora(
    renderer: nn.Module,
    lora_mode: str = DEFAULT_LORA_MODE,
    r: int = DEFAULT_LORA_R,
    *,
    conv_lora: str = "upstream",
    init_lora_weights: bool = True,
    trainable: bool = True,
) -> nn.Module:
    """A new personalised renderer: a zero-copy clone of ``renderer`` with LoRA on the layers
    ``lora_mode`` selects. Every base parameter is frozen; only the LoRA matrices train.
    ``renderer`` itself is not modified. ``init_lora_weights=False`` leaves B random (tests);
    ``trainable=False`` (inference only) never copies inference-mode base weights.
    """
    spec = LoraSpec(lora_mode, r, conv_lora)
    model = share_copy(renderer, trainable=trainable)
    model.requires_grad_(False)
    targets = lora_targets(model, lora_mode)
    if not targets and lora_mode != "none":
        raise InputError(f"lora_mode {lora_mode!r} selects no layer of this renderer ({type(renderer).__name__})")
    for group in _nesting_levels(targets):
        with warnings.catch_warnings():
            # the second pass (outer layers) re-uses the adapter name on purpose
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute")
            inject_adapter_in_model(_config(spec, group, init_lora_weights), model, adapter_name=ADAPTER_NAME)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    model.lora_spec = spec
    return model


def lora_layers(model: nn.Module) -> dict[str, LoraLayer]:
    """``{base module path: LoRA layer}`` of a personalised model."""
    return {name.replace(_BASE_LAYER, ""): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA matrices of ``model`` (what training optimises), in module order."""
    return [p for name, p in model.named_parameters() if "lora_" in name]


def lora_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """LoRA tensors in official naming: ``{"<path>.lora_A": A, "<path>.lora_B": B}``."""
    out = {}
    for path, layer in lora_layers(model).items():
        out[f"{path}.lora_A"] = layer.lora_A[ADAPTER_NAME].weight.detach()
        out[f"{path}.lora_B"] = layer.lora_B[ADAPTER_NAME].weight.detach()
    return out


@torch.no_grad()
def load_lora_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], strict: bool = True) -> None:
    """Copy LoRA tensors (official naming, as :func:`lora_state_dict` writes) into ``model``."""
    layers = lora_layers(model)
    expected = {f"{p}.lora_{ab}" for p in layers for ab in "AB"}
    missing, unexpected = sorted(expected - set(state_dict)), sorted(set(state_dict) - expected)
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"LoRA tensors do not match this renderer's LoRA layers: missing {missing[:6]}, "
            f"unexpected {unexpected[:6]}; check lora_mode/r and the base model the adapter was made for"
        )
    for path, layer in layers.items():
        for ab, mod in (("A", layer.lora_A[ADAPTER_NAME]), ("B", layer.lora_B[ADAPTER_NAME])):
            t = state_dict.get(f"{path}.lora_{ab}")
            if t is None:
                continue
            if t.shape != mod.weight.shape:
                raise CheckpointError(
                    f"{path}.lora_{ab} has shape {list(t.shape)} but this renderer needs "
                    f"{list(mod.weight.shape)}; the adapter was made for another model or rank"
                )
            mod.weight.copy_(t)


def _delta_on_raw_weight(layer: LoraLayer) -> torch.Tensor:
    # peft convention, for the custom layers and peft-native conv alike: change of the stored weight
    return sum(layer.get_delta_weight(name) for name in layer.active_adapters if name in layer.lora_A)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """A new plain renderer (no LoRA layers) with every active adapter folded into new base
    weights (sum formed in float64). ``model`` and the base renderer are not modified."""
    merged = share_copy(model)
    for name, layer in list(lora_layers_by_module_name(merged).items()):
        base = layer.get_base_layer()
        w = base.weight
        new_w = (w.double() + _delta_on_raw_weight(layer).double()).to(w.dtype)
        base.weight = nn.Parameter(new_w, requires_grad=False)  # new tensor: the shared one is untouched
        parent_name, _, child = name.rpartition(".")
        setattr(merged.get_submodule(parent_name) if parent_name else merged, child, base)
    if hasattr(merged, "lora_spec"):
        del merged.lora_spec
    return merged


def lora_layers_by_module_name(model: nn.Module) -> dict[str, LoraLayer]:
    """``{actual module path in model: LoRA layer}``, innermost first (safe to unwrap in order)."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    return dict(sorted(found, key=lambda nm: -nm[0].count(".")))
