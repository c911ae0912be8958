"""The Real3D-Portrait / MimicTalk renderer (upstream ``OSAvatarSECC_Img2plane_Torso``).

Reference: ``mimictalk_architecture.md`` §1.7 (one frame, ``use_cached_backbone=True``) and §2.
Per frame:

    cat(cano, src, drv SECC) [B, 9, 512, 512] -> secc_img2plane_backbone -> [B, 3, C·D, 256, 256]
    planes = canonical planes + expression planes          (phase1_plane_fusion_mode 'add')
    volume rendering (volume.py), 128² rays x (48 + 48)     -> features [B, 32, 128, 128],
                                                               alpha, depth
    superresolution (HTB-SR + torso warp + background)      -> image [B, 3, 512, 512] in [-1, 1]

The canonical planes come either from a reference image (:meth:`Renderer.cano_planes`, the
Real3D-Portrait one-shot path, through ``plane2grid_module`` for tri-grid v2 checkpoints) or from
a personalised checkpoint's learnable tri-grid (MimicTalk; used as is, as upstream assigns it to
``_last_cano_planes``).

Attribute names equal the upstream checkpoint prefixes so official state dicts load strictly.
With ``RendererConfig.lora_rank > 0`` the model also holds an official-layout LoRA (the 1085-key
personalised layout, applied on the fly); :func:`~mimictalk_lib.renderer.loading.load_renderer`
normally merges it into the base weights instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..errors import InputError
from ..utils import ProgressFn, check_device_dtype, check_shape, report
from .config import RendererConfig
from .official_lora import attach_official_lora
from .img2plane import CanoImg2PlaneBackbone, Plane2Grid
from .segformer import SeccImg2PlaneBackbone
from .superres import NUM_LANDMARKS, SRReference, SuperResolution
from .volume import CAMERA_DIM, OSGDecoder, render_volume

LAMBDA_PERTURB_INIT = 0.001
"""Initial value of the two training-only scalars ``lambda_pertube_(blink_)secc``."""


@dataclass
class RenderOutput:
    """Rendered frames (B frames; R = image resolution, r = neural resolution)."""

    image: torch.Tensor  # [B, 3, R, R] final image in [-1, 1] (clamped, as upstream)
    image_raw: torch.Tensor  # [B, 3, r, r] volume-rendered head rgb in [-1, 1] (clamped)
    alpha: torch.Tensor  # [B, 1, r, r] accumulated opacity in [0, 1] (upstream weights_img)
    depth: torch.Tensor  # [B, 1, r, r] expected ray depth (upstream image_depth)

    def to(self, device=None, dtype=None) -> "RenderOutput":
        return RenderOutput(*(t.to(device=device, dtype=dtype) for t in (self.image, self.image_raw, self.alpha, self.depth)))

    @staticmethod
    def cat(parts: list["RenderOutput"]) -> "RenderOutput":
        return RenderOutput(*(torch.cat(ts) for ts in zip(*((p.image, p.image_raw, p.alpha, p.depth) for p in parts))))


class Renderer(nn.Module):
    """``OSAvatarSECC_Img2plane_Torso``: canonical planes + SECC-driven expression planes,
    volume-rendered and super-resolved with torso and background."""

    def __init__(self, cfg: RendererConfig):
        super().__init__()
        self.cfg = cfg
        self.cano_img2plane_backbone = CanoImg2PlaneBackbone(cfg.cano)
        if cfg.plane2grid is not None:
            self.plane2grid_module = Plane2Grid(cfg.plane2grid)
        self.secc_img2plane_backbone = SeccImg2PlaneBackbone(cfg.secc)
        self.decoder = OSGDecoder(cfg.triplane_hid_dim, cfg.decoder_hidden, cfg.triplane_hid_dim, cfg.decoder_lr_mul)
        self.superresolution = SuperResolution(cfg.sr)
        # Training-only loss weights upstream keeps as (frozen) parameters; here for strict loading.
        self.lambda_pertube_blink_secc = nn.Parameter(torch.tensor([LAMBDA_PERTURB_INIT]), requires_grad=False)
        self.lambda_pertube_secc = nn.Parameter(torch.tensor([LAMBDA_PERTURB_INIT]), requires_grad=False)
        if cfg.lora_rank > 0:
            attach_official_lora(self, cfg.lora_mode, cfg.lora_rank)

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.net[0].weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.net[0].weight.device

    # --- planes -------------------------------------------------------------------------------

    def cano_planes(self, image: torch.Tensor) -> torch.Tensor:
        """Canonical planes from a reference head image (upstream ``cal_cano_plane``).

        image [B, 3, S, S] in [-1, 1], background black (S = 512 full) ->
        [B, 3, C·D, S/2, S/2], refined by ``plane2grid_module`` for tri-grid v2.
        """
        planes = self.cano_img2plane_backbone(image.to(self.dtype))
        if self.cfg.plane2grid is not None:
            planes = self.plane2grid_module(planes)
        return planes

    def expression_planes(self, cano_secc: torch.Tensor, src_secc: torch.Tensor, drv_secc: torch.Tensor) -> torch.Tensor:
        """Expression planes from the SECC maps (upstream ``cal_secc_plane``, 'cano_src_tgt').

        Each [B or 1, 3, S, S] in [-1, 1] (cano and src broadcast over the driving batch B)
        -> [B, 3, C·D, S/2, S/2].
        """
        batch = drv_secc.shape[0]
        secc = torch.cat([cano_secc.expand(batch, -1, -1, -1), src_secc.expand(batch, -1, -1, -1), drv_secc], dim=1)
        return self.secc_img2plane_backbone(secc.to(self.dtype))  # [B, 9, S, S] -> planes

    def prepare_reference(self, ref_torso: torch.Tensor, bg: torch.Tensor, segmap: torch.Tensor) -> SRReference:
        """Encode the per-identity SR inputs once (torso appearance volume, background features);
        shapes: :class:`RenderSource`."""
        return self.superresolution.encode_reference(ref_torso.to(self.dtype), bg.to(self.dtype), segmap.to(self.dtype))

    def prepare_source(self, source: "RenderSource | SourceInputs", reference: Optional[SRReference] = None) -> "SourceInputs":
        """The per-identity work of ``source`` done once: batch-1 tensors moved to the model's
        device (T-row ones move chunk by chunk, :meth:`SourceInputs.rows`) and the SR reference
        encoded (:meth:`prepare_reference`), unless ``reference`` gives that encoding already
        (made by this model from the same torso, plate and segmentation: a per-identity cache,
        :meth:`mimictalk_lib.pipeline.TalkingSource.sr_reference`). A prepared
        :class:`SourceInputs` is returned as it is. Gradients flow unless the caller disables them."""
        if isinstance(source, SourceInputs):
            return source
        if not isinstance(source, RenderSource):
            raise InputError(f"Renderer: expected a RenderSource (the per-identity inputs), got {type(source).__name__}")
        device = self.device
        shared = [t.to(device) if t.shape[0] == 1 else t for t in (source.cano_planes, source.cano_secc, source.src_secc, source.kp_s)]
        if reference is None:
            reference = self.prepare_reference(source.ref_torso.to(device), source.bg.to(device), source.segmap.to(device))
        return SourceInputs(*shared, reference)

    # --- rendering ----------------------------------------------------------------------------

    def render(
        self,
        source: "RenderSource | SourceInputs",
        drv_secc: torch.Tensor,
        camera: torch.Tensor,
        kp_d: torch.Tensor,
        *,
        deterministic: bool = True,
        generator: Optional[torch.Generator] = None,
    ) -> RenderOutput:
        """Render a batch of B frames of ``source`` (upstream ``synthesis`` with
        ``use_cached_backbone``): a :class:`RenderSource`, prepared here, or a
        :class:`SourceInputs` from :meth:`prepare_source` (the per-identity work done once).

        drv_secc [B, 3, S, S] driving SECC maps in [-1, 1] (S = 2P, P = plane resolution); camera
        [B, 25] (c2w 4x4 + normalised K 3x3, EG3D convention); kp_d [B, 68, 3] lm68 keypoints in
        [-1, 1], z = 0. ``deterministic`` selects the sampling mode of :mod:`.volume` (stochastic
        mode draws from ``generator``). Gradients flow unless the caller disables them
        (:meth:`iter_chunks` runs under inference mode).
        """
        source = self.prepare_source(source)
        cfg = self.cfg
        batch = drv_secc.shape[0]
        side = cfg.secc_resolution
        cano_planes, cano_secc, src_secc, kp_s = source.cano_planes, source.cano_secc, source.src_secc, source.kp_s
        check_shape(drv_secc, (None, 3, side, side), "drv_secc (driving SECC)")
        check_shape(cano_secc, (None, 3, side, side), "cano_secc (canonical SECC)")
        check_shape(src_secc, (None, 3, side, side), "src_secc (source SECC)")
        check_shape(camera, (batch, CAMERA_DIM), "camera")
        check_shape(kp_d, (batch, NUM_LANDMARKS, 3), "kp_d (driving keypoints)")
        check_shape(cano_planes, (None, 3, cfg.plane_channels, cfg.plane_resolution, cfg.plane_resolution), "cano_planes")
        for name, t in (("cano_planes", cano_planes), ("cano_secc", cano_secc), ("src_secc", src_secc), ("kp_s", kp_s)):
            if t.shape[0] not in (1, batch):
                check_shape(t, (batch,) + tuple(t.shape[1:]), f"{name} (batch 1 or {batch})")

        # Planes are summed and sampled in fp32 whatever the network dtype.
        planes = cano_planes.float().expand(batch, -1, -1, -1, -1) + self.expression_planes(cano_secc, src_secc, drv_secc).float()
        vol = render_volume(
            planes, self.decoder, camera, resolution=cfg.neural_resolution, grid_depth=cfg.triplane_depth,
            box_warp=cfg.box_warp, num_coarse=cfg.num_coarse, num_fine=cfg.num_fine,
            deterministic=deterministic, generator=generator,
        )
        r = cfg.neural_resolution
        features = vol.features.transpose(1, 2).reshape(batch, -1, r, r)  # [B, r², C] -> [B, C, r, r]
        alpha = vol.alpha.transpose(1, 2).reshape(batch, 1, r, r)
        depth = vol.depth.transpose(1, 2).reshape(batch, 1, r, r)

        x = features.to(self.dtype)
        sr = self.superresolution(x[:, :3], x, alpha.to(self.dtype), kp_s.to(self.dtype), kp_d.to(self.dtype), source.reference)
        return RenderOutput(image=sr["image"].clamp(-1, 1), image_raw=features[:, :3].clamp(-1, 1), alpha=alpha, depth=depth)

    def iter_chunks(
        self,
        source: "RenderSource | SourceInputs",
        drv_secc: torch.Tensor | Callable[[slice], torch.Tensor],
        camera: torch.Tensor,
        kp_d: torch.Tensor,
        *,
        chunk_size: int = 4,
        deterministic: bool = True,
        generator: Optional[torch.Generator] = None,
        on_step: Optional[ProgressFn] = None,
    ) -> Iterator[tuple[slice, RenderOutput]]:
        """The one chunked render loop: render T frames ``chunk_size`` at a time under
        ``torch.inference_mode`` and yield ``(frames, RenderOutput)`` per chunk (on the model's
        device). ``source`` is prepared once (:meth:`prepare_source`) unless it already is.
        camera [T, 25] and kp_d [T, 68, 3] may live anywhere (each chunk is moved); ``drv_secc``
        is [T, 3, S, S] or a function giving the maps of a slice of frames (made per chunk, so
        nothing per frame at S² is held for the clip). A source with T rows (not 1) is sliced per
        chunk. ``on_step(done, total)`` after each chunk may raise to stop. Inference mode is
        entered per chunk, never across a ``yield`` (it is thread-local). In stochastic mode the
        frames depend on ``chunk_size`` (one generator stream); in deterministic mode they do not."""
        check_device_dtype(self.device, self.dtype, cpu_bf16=True)
        if self.device.type == "cpu" and self.dtype == torch.bfloat16:
            channels_last_convs_(self)
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise InputError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        with torch.inference_mode():
            source = self.prepare_source(source)
        device, total = self.device, int(camera.shape[0])
        secc = drv_secc if callable(drv_secc) else (lambda part: drv_secc[part])
        for start in range(0, total, chunk_size):
            part = slice(start, min(start + chunk_size, total))
            with torch.inference_mode():
                out = self.render(source.rows(part, total), secc(part).to(device), camera[part].to(device),
                                  kp_d[part].to(device), deterministic=deterministic, generator=generator)
            yield part, out
            report(on_step, part.stop, total)

    def render_frames(
        self,
        source: "RenderSource | SourceInputs",
        drv_secc: torch.Tensor,
        camera: torch.Tensor,
        kp_d: torch.Tensor,
        *,
        chunk_size: int = 4,
        deterministic: bool = True,
        generator: Optional[torch.Generator] = None,
        output_device: Optional[torch.device | str] = None,
        output_dtype: torch.dtype = torch.float32,
        on_step: Optional[ProgressFn] = None,
    ) -> RenderOutput:
        """Render a clip of T frames of ``source`` with :meth:`iter_chunks` and collect it.

        Per-frame inputs have T rows: drv_secc, camera, kp_d (shapes: :meth:`render`). The
        source's torso reference, background and segmentation are encoded once for the clip
        (batch 1). Each chunk runs in the model's dtype (fp32; bf16 / fp16 on a GPU; or bf16 on a
        CPU with native bf16, the opt-in fast mode of docs/benchmarks.md: load the model with
        that dtype) and its outputs are moved to ``output_device`` (default: the
        model's device) as ``output_dtype`` right away, so the compute device only ever holds one
        chunk.
        """
        if isinstance(source, RenderSource):
            for name in ("ref_torso", "bg", "segmap"):
                t = getattr(source, name)
                check_shape(t, (1,) + tuple(t.shape[1:]), f"{name} (one reference for the whole clip)")
        output_device = torch.device(output_device) if output_device is not None else self.device
        parts = [out.to(output_device, output_dtype) for _, out in self.iter_chunks(
            source, drv_secc, camera, kp_d, chunk_size=chunk_size, deterministic=deterministic, generator=generator,
            on_step=on_step)]
        return RenderOutput.cat(parts)


def channels_last_convs_(model: nn.Module) -> nn.Module:
    """Store the convolution weights of ``model`` channels-last (NHWC / NDHWC), in place, once.

    For bf16 on the CPU: oneDNN then runs these convolutions, and through their channels-last
    outputs the ones that follow, in NHWC, where its AMX / AVX512-BF16 kernels are. Measured on
    the full renderer (Sapphire Rapids, 2 threads): 1.6-1.7x the fp32 frame rate, against 1.4x
    for bf16 in the default layout (docs/benchmarks.md). Not used in fp32, where the other
    layout changes values at the fp32 noise level and gained nothing end to end."""
    with torch.inference_mode(False), torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                layout = torch.channels_last if m.weight.dim() == 4 else torch.channels_last_3d
                if not m.weight.is_contiguous(memory_format=layout):
                    m.weight.data = m.weight.data.contiguous(memory_format=layout)
    return model


@dataclass
class RenderSource:
    """Who is rendered: the per-identity inputs every frame of a clip shares (any device).

    Tensors have batch 1 (shared by every frame) or the clip's T frames, except the SR
    reference (ref_torso, bg, segmap), which a clip encodes once (:meth:`Renderer.prepare_source`).
    """

    cano_planes: torch.Tensor  # [1 or T, 3, C·D, P, P] canonical tri-plane / tri-grid (P = plane resolution)
    cano_secc: torch.Tensor  # [1 or T, 3, S, S] canonical SECC map in [-1, 1] (S = 2P)
    src_secc: torch.Tensor  # [1 or T, 3, S, S] source SECC map in [-1, 1]
    kp_s: torch.Tensor  # [1 or T, 68, 3] source lm68 keypoints in [-1, 1], z = 0
    ref_torso: torch.Tensor  # [1 or B, 3, H, W] inpainted torso of the source frame in [-1, 1]
    bg: torch.Tensor  # [1 or B, 3, H, W] background plate in [-1, 1]
    segmap: torch.Tensor  # [1 or B, 6, H, W] one-hot MediaPipe segmentation of the source frame


@dataclass
class SourceInputs:
    """A :class:`RenderSource` prepared by :meth:`Renderer.prepare_source`: batch-1 tensors on
    the model's device, the SR reference encoded. Tensors have batch 1 (broadcast) or the clip's
    T frames."""

    cano_planes: torch.Tensor  # [1 or T, 3, C·D, P, P] canonical tri-plane / tri-grid
    cano_secc: torch.Tensor  # [1 or T, 3, S, S] canonical SECC map
    src_secc: torch.Tensor  # [1 or T, 3, S, S] source SECC map
    kp_s: torch.Tensor  # [1 or T, 68, 3] source torso keypoints
    reference: SRReference  # torso volume and background, encoded once

    def rows(self, part: slice, total: int) -> "SourceInputs":
        """The inputs of frames ``part`` of a ``total``-frame clip on the reference's device
        (batch-1 tensors as they are)."""
        device = self.reference.bg.device

        def cut(t: torch.Tensor) -> torch.Tensor:
            return t if t.shape[0] == 1 and total != 1 else t[part].to(device)

        return SourceInputs(cut(self.cano_planes), cut(self.cano_secc), cut(self.src_secc), cut(self.kp_s), self.reference)
