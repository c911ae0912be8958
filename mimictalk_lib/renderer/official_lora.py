"""The official MimicTalk LoRA layout (loralib-style), and folding it into base weights.

A personalised MimicTalk checkpoint (``model_ckpt_steps_N.ckpt``, architecture reference §2.6,
§3.3, §3.6) stores the full renderer state dict *plus* LoRA matrices: 1085 keys for
``lora_mode='secc2plane_sr'``, r=2, against the base renderer's 1039. Upstream's LoRA is its own
copy of Microsoft ``loralib`` with an added ``ConvLoRA`` and inline LoRA in the StyleGAN layers;
it is not peft. The maths, with ``lora_alpha = 1`` so that the scale is ``1 / r``:

* fully connected (StyleGAN ``FullyConnectedLayer``): ``A (r, in)``, ``B (out, r)``,
  ``dW = B @ A / r``;
* convolution, kernel k (loralib ``LoRAConv2d`` and the StyleGAN conv layers):
  ``A (r*k, in*k)``, ``B (out*k, r*k)``, ``dW = (B @ A).view(out, in, k, k) / r`` -- a plain
  row-major reshape of the ``(out*k, in*k)`` product, not a block rearrangement.

Where ``dW`` enters differs per layer type (upstream ``networks_stylegan2.py``):

==================  ==================================  =========================================
kind                layers                              effective weight
==================  ==================================  =========================================
``loralib_conv``    ``to_plane_cnn.{0,2,4,7}``          ``conv.weight + dW``
``stylegan_fc``     style ``affine``, ``decoder.net.N`` ``weight * gain + dW``, gain 1/sqrt(in)
``stylegan_conv``   ``prenet`` (Conv2dLayer)            ``weight * gain + dW``, gain 1/sqrt(in k k)
``stylegan_modconv`` SynthesisLayer, ToRGBLayer         ``weight + dW`` (then modulation)
==================  ==================================  =========================================

so folding ``dW`` into the stored *raw* weight divides it by the gain for the two equalized-lr
kinds. (Every layer upstream adapts has ``lr_multiplier = 1``, so the FC gain is 1/sqrt(in).)
The kind is read from the checkpoint's structure, not from names: a ``.conv.weight`` sibling
means loralib ``ConvLoRA``; a 2-D weight is a StyleGAN FC; a 4-D weight with an ``.affine``
sibling is a modulated layer; any other 4-D weight is a StyleGAN ``Conv2dLayer``.

Other layout facts handled here:

* ``LoRAConv2d`` keeps its weights at ``<prefix>.conv.weight``/``.conv.bias`` and also exposes
  them as ``<prefix>.weight``/``.bias`` (the same tensors), so both names are in the file; the
  base layout has only ``<prefix>.weight``/``.bias``.
* ``block0.torgb``/``block1.torgb`` LoRA is zero-initialised in both A and B, so it never
  receives a gradient and stays exactly zero; the keys exist anyway.
* Checkpoints are saved in train mode, so ``conv.weight`` holds the *unmerged* base weight.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal, Mapping, Optional

import torch
from torch import nn

from ..errors import CheckpointError
from ..utils import logger
from .lora_targets import LORA_ALPHA, check_rank, mode_from_parts, parse_lora_mode, part_of

LoraKind = Literal["loralib_conv", "stylegan_fc", "stylegan_conv", "stylegan_modconv"]

LORA_A, LORA_B = "lora_A", "lora_B"
_ALIAS_SUFFIXES = (".conv.weight", ".conv.bias")  # loralib ConvLoRA: self.weight is self.conv.weight


def is_official_lora_key(key: str) -> bool:
    """True for an official LoRA matrix key (``<prefix>.lora_A`` / ``<prefix>.lora_B``)."""
    return key.endswith("." + LORA_A) or key.endswith("." + LORA_B)


def official_lora_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The LoRA matrix keys of an official personalised state dict, in file order."""
    return [k for k in state_dict if is_official_lora_key(k)]


def official_alias_keys(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """The loralib ``ConvLoRA`` duplicate keys (``<prefix>.conv.weight``/``.conv.bias``) that
    the base layout does not have."""
    return [k for k in state_dict if k.endswith(_ALIAS_SUFFIXES) and _strip_conv(k) in state_dict]


def has_official_lora(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True if ``state_dict`` is in the personalised (LoRA) layout."""
    return any(is_official_lora_key(k) for k in state_dict)


def _strip_conv(alias_key: str) -> str:
    # "<prefix>.conv.weight" -> "<prefix>.weight"
    head, leaf = alias_key.rsplit(".conv.", 1)
    return f"{head}.{leaf}"


def official_lora_kind(prefix: str, state_dict: Mapping[str, torch.Tensor]) -> LoraKind:
    """How the LoRA of module ``prefix`` enters its layer, read from the layout (see module doc)."""
    if f"{prefix}.conv.weight" in state_dict:
        return "loralib_conv"
    weight = state_dict.get(f"{prefix}.weight")
    if weight is None:
        raise CheckpointError(
            f"LoRA keys {prefix}.lora_A/lora_B have no base weight ({prefix}.weight or "
            f"{prefix}.conv.weight); the checkpoint is incomplete or not a MimicTalk renderer"
        )
    if weight.dim() == 2:
        return "stylegan_fc"
    if weight.dim() == 4:
        return "stylegan_modconv" if f"{prefix}.affine.weight" in state_dict else "stylegan_conv"
    raise CheckpointError(f"{prefix}.weight has shape {list(weight.shape)}; LoRA is only defined for 2-D and 4-D weights")


def official_lora_gain(kind: LoraKind, weight_shape: torch.Size | tuple[int, ...]) -> float:
    """The factor the stored raw weight is multiplied by before ``dW`` is added (1 if none)."""
    if kind == "stylegan_fc":
        return 1.0 / math.sqrt(weight_shape[1])  # lr_multiplier 1 / sqrt(in)
    if kind == "stylegan_conv":
        return 1.0 / math.sqrt(weight_shape[1] * weight_shape[2] * weight_shape[3])  # 1 / sqrt(in k k)
    return 1.0


def infer_official_rank(lora_A: torch.Tensor, weight_shape: torch.Size | tuple[int, ...]) -> int:
    """Rank r from ``A`` (``(r, in)`` for FC, ``(r*k, in*k)`` for a k x k conv)."""
    k = 1 if len(weight_shape) == 2 else weight_shape[-1]
    return lora_A.shape[0] // k


def official_pair_shapes(
    weight_shape: torch.Size | tuple[int, ...], r: int, name: str = "LoRA"
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Official ``(A shape, B shape)`` for a weight: FC ``[out, in]`` -> ``(r, in), (out, r)``;
    conv ``[out, in, k, k]`` -> ``(r*k, in*k), (out*k, r*k)``."""
    check_rank(r)
    if len(weight_shape) == 2:
        out_c, in_c = weight_shape
        return (r, in_c), (out_c, r)
    if len(weight_shape) == 4:
        out_c, in_c, k, k2 = weight_shape
        if k != k2:
            raise CheckpointError(f"{name}: LoRA needs a square kernel, weight is {list(weight_shape)}")
        return (r * k, in_c * k), (out_c * k, r * k)
    raise CheckpointError(f"{name}: LoRA is only defined for 2-D and 4-D weights, got {list(weight_shape)}")


def official_lora_delta(
    lora_A: torch.Tensor,
    lora_B: torch.Tensor,
    weight_shape: torch.Size | tuple[int, ...],
    r: Optional[int] = None,
    name: str = "LoRA",
) -> torch.Tensor:
    """``dW`` of one official LoRA pair, scaled by ``lora_alpha / r`` (= 1/r), in ``weight_shape``.

    FC (2-D weight ``[out, in]``): ``B (out, r) @ A (r, in)``.
    Conv (4-D weight ``[out, in, k, k]``): ``(B (out*k, r*k) @ A (r*k, in*k)).view(out, in, k, k)``.
    """
    weight_shape = tuple(weight_shape)
    if r is None:
        r = infer_official_rank(lora_A, weight_shape)
    want_a, want_b = official_pair_shapes(weight_shape, r, name)
    if tuple(lora_A.shape) != want_a or tuple(lora_B.shape) != want_b:
        raise CheckpointError(
            f"{name}: LoRA shapes A {list(lora_A.shape)}, B {list(lora_B.shape)} do not fit weight "
            f"{list(weight_shape)} at r={r}; expected A {list(want_a)}, B {list(want_b)}"
        )
    # [out*k, r*k] @ [r*k, in*k] -> [out*k, in*k] -> (row-major) [out, in, k, k]
    return (lora_B @ lora_A).reshape(weight_shape) * (LORA_ALPHA / r)


@dataclass
class OfficialLora:
    """The LoRA part of an official personalised state dict, separated from the base weights.

    ``pairs[prefix] = (A, B)`` in the official shapes; ``kinds[prefix]`` says where ``dW``
    enters; ``weight_shapes[prefix]`` is the base weight's shape; ``r`` the common rank.
    """

    r: int
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    kinds: dict[str, LoraKind] = field(default_factory=dict)
    weight_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)

    @property
    def lora_mode(self) -> str:
        """The upstream mode string these modules correspond to (e.g. ``'secc2plane_sr'``)."""
        return mode_from_parts({part_of(p) for p in self.pairs} - {None})

    @property
    def zero_b(self) -> list[str]:
        """Modules whose ``dW`` is exactly zero (all-zero ``B`` or ``A``), e.g. the torgb LoRA."""
        return [p for p, (a, b) in self.pairs.items() if not bool(b.any()) or not bool(a.any())]

    def num_parameters(self) -> int:
        return sum(a.numel() + b.numel() for a, b in self.pairs.values())

    def delta(self, prefix: str) -> torch.Tensor:
        """``dW`` of module ``prefix`` (official scaling, in the base weight's shape)."""
        a, b = self.pairs[prefix]
        return official_lora_delta(a, b, self.weight_shapes[prefix], self.r, name=prefix)


def split_official_lora(
    state_dict: Mapping[str, torch.Tensor], r: Optional[int] = None
) -> tuple[dict[str, torch.Tensor], OfficialLora]:
    """Split a personalised (1085-key) state dict into the base (1039-key) layout and its LoRA.

    The ``.conv.weight``/``.conv.bias`` aliases become ``.weight``/``.bias`` (``.conv.*`` wins if
    the two differ, as upstream's forward uses it). ``r`` (from ``lora_args['lora_r']``) is
    checked against the shapes; if None it is inferred. Base weights are returned unmerged.
    """
    lora_prefixes = sorted({k.rsplit(".", 1)[0] for k in official_lora_keys(state_dict)})
    base: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if is_official_lora_key(key):
            continue
        if key.endswith(_ALIAS_SUFFIXES) and key.rsplit(".conv.", 1)[0] in lora_prefixes:
            plain = _strip_conv(key)
            other = state_dict.get(plain)
            if other is not None and other is not value and not _same_values(other, value):
                logger.warning("%s and its alias %s differ; using %s as upstream's forward does", plain, key, key)
            base[plain] = value
            continue
        if key in base:  # the plain name of an alias already taken from ".conv.*"
            continue
        base[key] = value
    info = OfficialLora(r=0)
    ranks = set()
    for prefix in lora_prefixes:
        a, b = state_dict.get(f"{prefix}.{LORA_A}"), state_dict.get(f"{prefix}.{LORA_B}")
        if a is None or b is None:
            raise CheckpointError(f"LoRA of {prefix} is incomplete: lora_A and lora_B must both be present")
        kind = official_lora_kind(prefix, state_dict)
        w = state_dict[f"{prefix}.conv.weight" if kind == "loralib_conv" else f"{prefix}.weight"]
        info.pairs[prefix] = (a, b)
        info.kinds[prefix] = kind
        info.weight_shapes[prefix] = tuple(w.shape)
        ranks.add(infer_official_rank(a, w.shape))
    if len(ranks) > 1:
        raise CheckpointError(f"LoRA matrices imply different ranks {sorted(ranks)}; expected one rank for all layers")
    if ranks:
        inferred = ranks.pop()
        if r is not None and r != inferred:
            raise CheckpointError(f"lora_args says lora_r={r} but the LoRA matrices have rank {inferred}")
        info.r = inferred
    elif r is not None:
        info.r = check_rank(r)
    for prefix in info.pairs:  # validates every shape against its weight
        info.delta(prefix)
    return base, info


def merge_official_lora(
    state_dict: Mapping[str, torch.Tensor], r: Optional[int] = None
) -> tuple[dict[str, torch.Tensor], OfficialLora]:
    """Fold the official LoRA into the base weights: 1085-key layout -> 1039-key base layout.

    For each adapted module the stored raw weight becomes ``W + dW / gain`` (gain per
    :func:`official_lora_gain`), so the base renderer computes exactly upstream's
    ``W * gain + dW`` (equalized-lr kinds) or ``W + dW`` (loralib / modulated kinds), up to
    float rounding. The sum is formed in float64 and cast back to the weight's dtype. Returns
    the merged base state dict and the split-off :class:`OfficialLora` (for provenance).
    A dict without LoRA keys is returned unchanged (as a new dict).
    """
    base, info = split_official_lora(state_dict, r)
    for prefix, kind in info.kinds.items():
        key = f"{prefix}.weight"
        w = base[key]
        gain = official_lora_gain(kind, w.shape)
        merged = w.double() + info.delta(prefix).double() / gain
        base[key] = merged.to(w.dtype)
    return base, info


def official_lora_shapes(
    base_state_dict: Mapping[str, torch.Tensor], lora_mode: str = "secc2plane_sr", r: int = 2
) -> dict[str, tuple[tuple[int, ...], tuple[int, ...]]]:
    """``{prefix: (A shape, B shape)}`` of the official LoRA for a base state dict, mode and rank."""
    check_rank(r)
    parts = parse_lora_mode(lora_mode)
    shapes = {}
    for key, w in base_state_dict.items():
        if not key.endswith(".weight"):
            continue
        prefix = key[: -len(".weight")]
        if part_of(prefix) in parts and w.dim() in (2, 4):
            shapes[prefix] = official_pair_shapes(tuple(w.shape), r, prefix)
    return shapes


def to_official_layout(
    base_state_dict: Mapping[str, torch.Tensor], pairs: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> dict[str, torch.Tensor]:
    """Build a personalised state dict in the official layout from a base one and LoRA pairs.

    Adds ``<prefix>.lora_A``/``lora_B``, and for plain ``nn.Conv2d`` targets (loralib
    ``LoRAConv2d`` upstream: ``secc_img2plane_backbone.to_plane_cnn.N``) the ``.conv.weight``/
    ``.conv.bias`` aliases next to ``.weight``/``.bias``. Base weights are stored unmerged.
    """
    out = dict(base_state_dict)
    for prefix, (a, b) in pairs.items():
        if f"{prefix}.weight" not in base_state_dict:
            raise CheckpointError(f"LoRA for {prefix} given but the base state dict has no {prefix}.weight")
        if _is_plain_conv_target(prefix):
            for leaf in ("weight", "bias"):
                if f"{prefix}.{leaf}" in base_state_dict:
                    out[f"{prefix}.conv.{leaf}"] = base_state_dict[f"{prefix}.{leaf}"]
        out[f"{prefix}.{LORA_A}"] = a
        out[f"{prefix}.{LORA_B}"] = b
    return out


def _same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape:
        return False
    if a.is_meta or b.is_meta:  # shape-only layouts (key-table checks)
        return True
    return torch.equal(a, b)


def _is_plain_conv_target(prefix: str) -> bool:
    # the only plain torch convolutions upstream adapts (loralib LoRAConv2d) are to_plane_cnn's
    return re.search(r"(?:^|\.)to_plane_cnn\.\d+$", prefix) is not None


# --- official LoRA layout held in the model (personalised checkpoints, applied on the fly) --------


class OfficialLoraConv2d(nn.Module):
    """loralib ``LoRAConv2d`` layout around a plain ``nn.Conv2d`` (``to_plane_cnn.N``): the conv
    under ``conv``, its weight and bias *also* registered as ``weight``/``bias`` (the same
    tensors, so both names are in the state dict, as upstream), and ``lora_A``/``lora_B``.
    forward = conv with ``W + dW`` (dW per :func:`official_lora_delta`).
    """

    def __init__(self, conv: nn.Conv2d, a_shape: tuple[int, ...], b_shape: tuple[int, ...], rank: int):
        super().__init__()
        self.conv = conv
        self.weight = conv.weight
        self.bias = conv.bias
        kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        self.lora_A = nn.Parameter(torch.zeros(a_shape, **kw))
        self.lora_B = nn.Parameter(torch.zeros(b_shape, **kw))
        self.lora_rank = rank
        # load_state_dict(assign=True) replaces the two names separately: tie them again.
        self.register_load_state_dict_post_hook(OfficialLoraConv2d._retie)

    @staticmethod
    def _retie(module: "OfficialLoraConv2d", incompatible_keys) -> None:
        module.weight, module.bias = module.conv.weight, module.conv.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv.weight
        return self.conv._conv_forward(x, w + official_lora_delta(self.lora_A, self.lora_B, w.shape, self.lora_rank), self.conv.bias)


def _inject_official_delta(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook of a StyleGAN layer holding official ``lora_A``/``lora_B``: pass dW to its
    ``delta_weight`` hook (which adds it after the gain or to the raw weight, per layer type)."""
    kwargs["delta_weight"] = official_lora_delta(module.lora_A, module.lora_B, module.weight.shape, module.lora_rank)
    return args, kwargs


def attach_official_lora(model: nn.Module, mode: str, rank: int) -> None:
    """Give ``model`` the official LoRA parameters of ``mode`` / ``rank`` (zeros: identity until
    loaded), so its state dict has exactly the personalised layout's keys (1085 for
    'secc2plane_sr', r=2) and the LoRA is applied on the fly."""
    shapes = official_lora_shapes({k: v for k, v in model.state_dict().items()}, mode, rank)
    for prefix, (a_shape, b_shape) in shapes.items():
        module = model.get_submodule(prefix)
        if isinstance(module, nn.Conv2d):
            parent_name, _, child = prefix.rpartition(".")
            setattr(model.get_submodule(parent_name), child, OfficialLoraConv2d(module, a_shape, b_shape, rank))
            continue
        kw = dict(device=module.weight.device, dtype=module.weight.dtype)
        module.lora_A = nn.Parameter(torch.zeros(a_shape, **kw))
        module.lora_B = nn.Parameter(torch.zeros(b_shape, **kw))
        module.lora_rank = rank
        module.register_forward_pre_hook(_inject_official_delta, with_kwargs=True)
