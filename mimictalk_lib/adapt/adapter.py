"""The adapter file: one identity's personalisation of a base MimicTalk renderer.

Upstream keeps a personalised renderer as a full training checkpoint (architecture reference
§3.6: every base weight, the LoRA, the tri-grid, Adam moments: about 0.8 GB). An adapter holds
only what differs from the base, in one safetensors file:

====================  ==========================================================================
``lora.<path>.lora_A`` LoRA matrices in the official naming and shapes (:mod:`..lora.inject`)
``triplane``          the learned canonical tri-grid ``[1, 3, C·D, P, P]`` (fp32, or fp16)
``norm.<key>``        BatchNorm statistics and spectral-norm vectors of the personalised model
                      (they move when training runs in train mode, as upstream's does)
``identity.<name>``   what rendering needs: ``src_frame`` [1, 3, S, S] (upstream ``gt_img``),
                      ``id`` [1, 80], ``src_kp`` [68, 3], optional ``src_exp`` [1, 64],
                      ``bg`` [1, 3, S, S], ``torso_ref`` [1, 3, S, S], ``segmap`` [1, 6, S, S]
``base_probe``        a few values of every base parameter (base-model fingerprint)
====================  ==========================================================================

plus JSON metadata (format name and version, LoRA config including the conv form, base-model
fingerprint, training settings, steps, final losses). About 82 MB at full size with an fp32
tri-grid, 44 MB with fp16.

:func:`personalise` applies an adapter to a base renderer and returns a new personalised
renderer; the base is never modified.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import nn

from ..checkpoint import (
    load_safetensors,
    looks_like_torch_checkpoint,
    read_safetensors_metadata,
    read_safetensors_shapes,
    save_safetensors,
)
from ..errors import CheckpointError
from ..lora.inject import LoraSpec, inject_lora, load_lora_state_dict, merge_lora, share_copy
from ..renderer.loading import PERSON_FIELDS, PersonalisedRenderer, PersonData
from ..utils import logger

ADAPTER_FORMAT = "mimictalk-adapter"
ADAPTER_VERSION = 1
NORM_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "weight_u", "weight_v")
"""Buffers that change when the renderer runs in train mode (BatchNorm, spectral norm)."""
IDENTITY_FIELDS = PERSON_FIELDS
PROBES_PER_TENSOR = 8
PROBE_RTOL, PROBE_ATOL = 2e-2, 1e-3  # loose enough for a bf16 / fp16 copy of the same base


AdapterIdentity = PersonData
"""Identity data stored with an adapter: the renderer's one person type."""


@dataclass
class Adapter:
    """An identity's personalisation of a base renderer (see module docstring)."""

    lora: dict[str, torch.Tensor]  # official naming: "<path>.lora_A" / ".lora_B"
    spec: LoraSpec
    triplane: torch.Tensor  # [1, 3, C·D, P, P]
    identity: AdapterIdentity
    norm_state: dict[str, torch.Tensor] = field(default_factory=dict)
    base_probe: Optional[torch.Tensor] = None
    metadata: dict[str, Any] = field(default_factory=dict)


# --- base-model fingerprint -----------------------------------------------------------------


def base_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The base renderer's parameters under their official names (LoRA wrappers see through)."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            continue
        out[name.replace(".base_layer", "")] = p
    return out


def _probe_indices(numel: int) -> torch.Tensor:
    return torch.linspace(0, numel - 1, min(PROBES_PER_TENSOR, numel)).round().long()


def base_fingerprint(params: dict[str, torch.Tensor]) -> tuple[str, torch.Tensor]:
    """(sha256 of the parameter names and shapes, fp32 probe of a few values per tensor)."""
    keys = sorted(params)
    structure = hashlib.sha256("\n".join(f"{k}:{tuple(params[k].shape)}" for k in keys).encode()).hexdigest()
    probes = []
    for k in keys:
        t = params[k].detach()
        if t.is_meta:
            raise CheckpointError("cannot fingerprint a renderer whose weights are on the meta device")
        flat = t.reshape(-1)
        probes.append(flat[_probe_indices(flat.numel()).to(flat.device)].float().cpu())
    return structure, torch.cat(probes) if probes else torch.zeros(0)


def check_base(adapter: Adapter, renderer: nn.Module) -> None:
    """Raise CheckpointError unless ``renderer`` is the base model the adapter was made for."""
    want = adapter.metadata.get("base", {}).get("structure_sha256")
    if want is None or adapter.base_probe is None:
        logger.warning("adapter has no base-model fingerprint; cannot check it matches this renderer")
        return
    structure, probe = base_fingerprint(base_parameters(renderer))
    if structure != want:
        raise CheckpointError(
            "this adapter was made for a different renderer architecture (parameter names/shapes differ); "
            "load the base model it was trained on (see its metadata 'base')"
        )
    if probe.shape != adapter.base_probe.shape or not torch.allclose(probe, adapter.base_probe, rtol=PROBE_RTOL, atol=PROBE_ATOL):
        raise CheckpointError(
            "this adapter was trained on a different base model (same architecture, other weights); "
            "load the base renderer it was made for, or pass check_base=False to apply it anyway",
            in_node="Apply Adapter: this adapter was trained on a different base model (same architecture, other "
                    "weights); connect the base renderer it was made for, or turn check_base off to apply it anyway",
        )


# --- norm state -------------------------------------------------------------------------------


def norm_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """BatchNorm / spectral-norm buffers of ``model`` under official names (clones, CPU)."""
    return {
        name.replace(".base_layer", ""): b.detach().cpu().clone()
        for name, b in model.named_buffers()
        if name.endswith(NORM_SUFFIXES)
    }


@torch.no_grad()
def load_norm_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy norm buffers (official names) into ``model``'s own buffers."""
    buffers = {name.replace(".base_layer", ""): b for name, b in model.named_buffers()}
    unknown = sorted(set(state) - set(buffers))
    if unknown:
        raise CheckpointError(f"adapter norm statistics do not fit this renderer: unknown buffers {unknown[:5]}")
    for key, value in state.items():
        target = buffers[key]
        if target.shape != value.shape:
            raise CheckpointError(f"adapter buffer {key} has shape {list(value.shape)}, the renderer {list(target.shape)}")
        target.copy_(value.to(target.dtype))


# --- file -------------------------------------------------------------------------------------


def save_adapter(path: str | os.PathLike, adapter: Adapter, *, triplane_dtype: torch.dtype = torch.float32) -> None:
    """Write ``adapter`` to a safetensors file (atomically). ``triplane_dtype=torch.float16``
    halves the file (the tri-grid is ~94 % of it)."""
    if triplane_dtype not in (torch.float32, torch.float16):
        raise CheckpointError(f"triplane_dtype must be torch.float32 or torch.float16, got {triplane_dtype}")
    tensors: dict[str, torch.Tensor] = {f"lora.{k}": v.float() for k, v in adapter.lora.items()}
    tensors["triplane"] = adapter.triplane.detach().to(triplane_dtype)
    tensors.update({f"norm.{k}": v for k, v in adapter.norm_state.items()})
    tensors.update({f"identity.{k}": _pack(k, v.detach()) for k, v in adapter.identity.tensors().items()})
    if adapter.base_probe is not None:
        tensors["base_probe"] = adapter.base_probe
    meta = dict(adapter.metadata)
    meta.update(format=ADAPTER_FORMAT, version=ADAPTER_VERSION, lora=dict(adapter.spec.to_dict(), lora_alpha=1.0),
                video_id=adapter.identity.video_id, triplane_dtype=str(triplane_dtype).removeprefix("torch."))
    save_safetensors(path, tensors, meta)


_HALF_FIELDS = ("src_frame", "bg", "torso_ref")  # images in [-1, 1]: fp16 error < 1/4 of an 8-bit step


def _pack(name: str, t: torch.Tensor) -> torch.Tensor:
    if name == "segmap":
        return t.to(torch.uint8)  # one-hot
    return t.to(torch.float16) if name in _HALF_FIELDS else t.float()  # storage format only


IDENTITY_SHAPES = {"id": (1, 80), "src_kp": (68, 3), "src_exp": (1, 64), "src_euler": (1, 3), "src_trans": (1, 3)}
"""Fixed shapes of the identity fields; the images (``src_frame``, ``bg``, ``torso_ref``: [1, 3, S, S],
``segmap``: [1, 6, S, S]) have the renderer's SECC size S."""
MAX_KERNEL = 7  # loralib conv LoRA stores rank x kernel rows; kernels in the renderer are 1 or 3


def _metadata_error(path, what: str) -> CheckpointError:
    return CheckpointError(f"{path}: damaged adapter metadata ({what}); the file is not a usable MimicTalk adapter. "
                           "Save or import the adapter again.")


def _checked_metadata(meta: Any, path) -> tuple[dict, LoraSpec]:
    """The adapter metadata with every field :func:`load_adapter` uses checked for type and range."""
    from ..lora.layers import CONV_LORA_FORMS
    from ..renderer.lora_targets import LORA_MODES

    if not isinstance(meta, dict):
        raise _metadata_error(path, f"a {type(meta).__name__} instead of a JSON object")
    if meta.get("format") != ADAPTER_FORMAT:
        problem = f"{path} is not a MimicTalk adapter (metadata format {meta.get('format')!r}); "
        raise CheckpointError(
            problem + "an upstream personalised checkpoint (model_ckpt_steps_N.ckpt) is imported with "
            "import_official_checkpoint",
            in_node="Load Adapter: adapter " + problem + "pick a file saved by Save Adapter or a training run's "
                    "adapter.safetensors; an official personalised checkpoint is picked as its .ckpt file itself, "
                    "which Load Adapter imports",
        )
    version = meta.get("version")
    if type(version) is not int or version < 1:
        raise _metadata_error(path, f"'version' is {version!r}, expected a positive integer")
    if version > ADAPTER_VERSION:
        raise CheckpointError(f"{path} has adapter format version {version}; this pack reads up to {ADAPTER_VERSION}: update it")
    lora = meta.get("lora")
    if not isinstance(lora, dict):
        raise _metadata_error(path, "no 'lora' settings" if lora is None else f"'lora' is a {type(lora).__name__}, expected an object")
    mode, rank, conv = lora.get("lora_mode"), lora.get("r"), lora.get("conv_lora", "upstream")
    if not isinstance(mode, str) or mode not in LORA_MODES:
        raise _metadata_error(path, f"lora.lora_mode is {mode!r}, expected one of {', '.join(LORA_MODES)}")
    if type(rank) is not int or rank < 1:
        raise _metadata_error(path, f"lora.r is {rank!r}, expected a positive integer")
    if not isinstance(conv, str) or conv not in CONV_LORA_FORMS:
        raise _metadata_error(path, f"lora.conv_lora is {conv!r}, expected one of {', '.join(CONV_LORA_FORMS)}")
    for key, kind in (("video_id", str), ("triplane_dtype", str), ("base", dict), ("training", dict)):
        if key in meta and not isinstance(meta[key], kind):
            raise _metadata_error(path, f"'{key}' is a {type(meta[key]).__name__}, expected a {kind.__name__}")
    sha = meta.get("base", {}).get("structure_sha256")
    if sha is not None and not isinstance(sha, str):
        raise _metadata_error(path, f"base.structure_sha256 is a {type(sha).__name__}, expected a string")
    return meta, LoraSpec(mode, rank, conv)


def _check_shapes(shapes: dict[str, tuple[int, ...]], spec: LoraSpec, path) -> None:
    """Every shape the metadata implies, checked against the file's header before any tensor is
    read or any LoRA layer is allocated (a claimed rank of 10^7 must not reach peft)."""

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{path}: {what}; the adapter file is damaged or was edited. Save or import it again.")

    tri = shapes.get("triplane")
    if tri is None:
        raise CheckpointError(f"{path} has no 'triplane' tensor; the file is incomplete")
    if len(tri) != 5 or tri[:2] != (1, 3) or tri[3] != tri[4] or min(tri) < 1:
        raise bad(f"'triplane' has shape {list(tri)}, expected [1, 3, C·D, P, P]")
    lora = {k[len("lora."):]: v for k, v in shapes.items() if k.startswith("lora.")}
    if spec.lora_mode == "none":
        if lora:
            raise bad(f"lora_mode is 'none' but the file holds {len(lora)} LoRA tensors")
    else:
        paths = {k.rsplit(".", 1)[0] for k in lora}
        if not paths:
            raise bad(f"lora_mode is {spec.lora_mode!r} but the file holds no LoRA tensors")
        for p in sorted(paths):
            a, b = lora.get(f"{p}.lora_A"), lora.get(f"{p}.lora_B")
            if a is None or b is None or len(a) not in (2, 4) or len(b) != len(a):
                raise bad(f"LoRA layer {p} lacks a 2-D or 4-D lora_A / lora_B pair")
            inner = a[0]
            if inner != b[1] or inner % spec.r or inner // spec.r > MAX_KERNEL or min(a + b) < 1:
                raise bad(f"LoRA layer {p} has rank dimension {inner} (lora_A {list(a)}, lora_B {list(b)}), "
                          f"which does not fit the declared rank r={spec.r}")
    for name, want in IDENTITY_SHAPES.items():
        got = shapes.get(f"identity.{name}")
        if got is not None and tuple(got) != want:
            raise bad(f"identity.{name} has shape {list(got)}, expected {list(want)}")
    for name, channels in (("src_frame", 3), ("bg", 3), ("torso_ref", 3), ("segmap", 6)):
        got = shapes.get(f"identity.{name}")
        if got is not None and (len(got) != 4 or got[:2] != (1, channels) or got[2] != got[3]):
            raise bad(f"identity.{name} has shape {list(got)}, expected [1, {channels}, S, S]")


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an adapter file written by :func:`save_adapter` (CPU tensors).

    The metadata and the tensor shapes in the header are checked first (types, ranges, the LoRA
    rank against the stored matrices), so a damaged or edited file ends in CheckpointError before
    anything is allocated. An upstream ``.ckpt`` is recognised and pointed to
    :func:`~mimictalk_lib.adapt.official_import.import_official_checkpoint`."""
    if not os.path.isfile(path):
        raise CheckpointError(f"adapter file not found: {path}")
    if looks_like_torch_checkpoint(path):
        raise CheckpointError(
            f"{path} looks like an upstream MimicTalk checkpoint (a torch .ckpt such as model_ckpt_steps_N.ckpt), "
            "not an adapter file. Import it with mimictalk_lib.adapt.official_import.import_official_checkpoint(path, "
            "base_renderer) and save the result with save_adapter; in ComfyUI, pick the .ckpt in Load Adapter, which "
            "imports it."
        )
    meta, spec = _checked_metadata(read_safetensors_metadata(path), path)
    _check_shapes(read_safetensors_shapes(path), spec, path)
    tensors, _ = load_safetensors(path)

    def group(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    ident = {k: v.float() for k, v in group("identity.").items()}
    identity = AdapterIdentity(**{k: ident.get(k) for k in IDENTITY_FIELDS}, video_id=str(meta.get("video_id", "")))
    return Adapter(
        lora=group("lora."),
        spec=spec,
        triplane=tensors["triplane"].float(),
        identity=identity,
        norm_state=group("norm."),
        base_probe=tensors.get("base_probe"),
        metadata=meta,
    )


# --- applying ---------------------------------------------------------------------------------


def personalise(
    renderer: nn.Module, adapter: Adapter, *, merge: bool = True, check_base_model: bool = True
) -> PersonalisedRenderer:
    """Apply ``adapter`` to a base ``renderer``: a new renderer with the LoRA (merged into new
    weight tensors by default; ``merge=False`` keeps peft layers applied on the fly), the
    adapter's norm statistics, and the tri-grid. ``renderer`` is not modified."""
    if check_base_model:
        check_base(adapter, renderer)
    if adapter.spec.lora_mode == "none":
        model = share_copy(renderer)
    else:
        model = inject_lora(renderer, adapter.spec.lora_mode, adapter.spec.r, conv_lora=adapter.spec.conv_lora,
                            trainable=False)
        load_lora_state_dict(model, adapter.lora)
        if merge:
            model = merge_lora(model)
    load_norm_state(model, adapter.norm_state)
    model.requires_grad_(False)
    model.eval()
    device = next(model.parameters()).device
    return PersonalisedRenderer(
        model=model,
        cano_planes=adapter.triplane.to(device=device, dtype=torch.float32),
        identity=adapter.identity,
        spec=adapter.spec,
        metadata=adapter.metadata,
    )
