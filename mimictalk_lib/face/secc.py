"""SECC ("PNCC") maps: the frontal render of the NCC-coloured BFM mesh (architecture §1.6).

Mirrors upstream ``deep_3drecon/secc_renderer.py`` (``SECC_Renderer(512)``) and
``util/mesh_renderer.py``: the mesh of (id, exp) with **zero** euler/translation is put in front of
the camera (z -> 10 - z), its x axis is negated, and it is rendered through pytorch3d's
``FoVPerspectiveCameras`` (identity R, T; fov = 2 atan(112 / 1015) ~ 12.59 deg; znear 5, zfar 15,
which only enter the projected z that the rasteriser replaces by view depth) at 512 x 512, with the
eye triangles removed and the NCC code as vertex colours. The map is ``colour * 2 - 1`` on the
face and exactly -1 elsewhere.

Per clip three maps are made (``secc_maps``): ``cano`` = (id, exp = 0), ``src`` = (id, exp of
frame 0 unless given) and ``drv[t]`` = (id, exp[t]).

Upstream quirk not reproduced: its mask is ``pix_to_face > 0``, so pixels covered by the first
triangle of the first mesh in each pytorch3d batch (face 0 of frame 0 of every 50-frame chunk)
come out as background. That depends on the chunking and is an artefact, so we draw them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InputError
from ..utils import ProgressFn, check_device_dtype, report
from .model import CAMERA_DISTANCE, CENTER, FOCAL, N_EXP, N_ID, FaceModel
from .raster import ndc_to_screen, render_vertex_colors

SECC_SIZE = 512  # SECC_Renderer(512)
FOV_DEG = 2 * math.degrees(math.atan(CENTER / FOCAL))  # ~12.59 deg, FoVPerspectiveCameras(fov=...)
ZNEAR, ZFAR = 5.0, 15.0  # no effect on the rasterised image (no near/far clipping in pytorch3d)


@dataclass
class SeccMaps:
    """The renderer's conditioning images, each in [-1, 1] with background -1."""

    cano: torch.Tensor  # [1, 3, S, S]  (id, exp = 0)
    src: torch.Tensor  # [1, 3, S, S]  (id, source expression)
    drv: torch.Tensor  # [T, 3, S, S]  (id, exp[t])


def secc_view_vertices(face_model: FaceModel, id: torch.Tensor, exp: torch.Tensor) -> torch.Tensor:
    """Zero-pose mesh in pytorch3d view space: x negated, z = 10 - z. -> [B, N, 3]."""
    v = face_model.shape(id, exp).reshape(-1, face_model.n_vertices, 3)
    return torch.stack([-v[..., 0], v[..., 1], CAMERA_DISTANCE - v[..., 2]], dim=-1)


def fov_ndc(verts_view: torch.Tensor, fov_deg: float = FOV_DEG) -> torch.Tensor:
    """pytorch3d ``FoVPerspectiveCameras`` projection of view-space points (square image):
    x_ndc = x / (z tan(fov/2)), y_ndc = y / (z tan(fov/2)); z stays the view depth."""
    t = math.tan(math.radians(fov_deg) / 2)
    z = verts_view[..., 2]
    return torch.stack([verts_view[..., 0] / (z * t), verts_view[..., 1] / (z * t), z], dim=-1)


def render_secc(
    face_model: FaceModel,
    id: torch.Tensor,
    exp: torch.Tensor,
    *,
    size: int = SECC_SIZE,
    dtype: Optional[torch.dtype] = None,
    chunk_size: int = 16,
    on_step: ProgressFn | None = None,
) -> torch.Tensor:
    """SECC maps of B (id, exp) pairs: id [B, 80] (or [80], broadcast), exp [B, 64] ->
    [B, 3, size, size] in ``dtype`` (default: the face model's), on the face model's device.

    Rasterises in float32 whatever ``dtype`` is, ``chunk_size`` frames at a time;
    ``on_step(done, total)`` after each chunk."""
    device = face_model.mean_shape.device
    dtype = dtype or face_model.mean_shape.dtype
    check_device_dtype(device, dtype)
    exp = exp.reshape(-1, exp.shape[-1]) if exp.dim() > 1 else exp.reshape(1, -1)
    id = id.reshape(-1, id.shape[-1]) if id.dim() > 1 else id.reshape(1, -1)
    if id.shape[-1] != N_ID or exp.shape[-1] != N_EXP or id.shape[0] not in (1, exp.shape[0]):
        raise InputError(
            f"render_secc: expected id [B or 1, {N_ID}] and exp [B, {N_EXP}], got id {list(id.shape)} "
            f"and exp {list(exp.shape)}"
        )
    n = exp.shape[0]
    id = id.expand(n, -1)
    # (colour - 0.5) / 0.5 as upstream, applied to the vertex colours: barycentrics sum to one, so
    # interpolating 2c - 1 equals 2 * interpolate(c) - 1 (to float rounding) and the background is -1
    colours = face_model.ncc.float() * 2 - 1
    out = torch.empty(n, 3, size, size, dtype=dtype, device=device)
    with torch.no_grad():
        for s in range(0, n, chunk_size):
            verts = secc_view_vertices(face_model, id[s : s + chunk_size].float(), exp[s : s + chunk_size].float())
            screen = ndc_to_screen(fov_ndc(verts.float()), size, size)
            img = render_vertex_colors(screen, face_model.secc_tri, colours, size, size, background=-1.0)
            out[s : s + chunk_size] = img
            report(on_step, min(s + chunk_size, n), n)
    return out


def secc_maps(
    face_model: FaceModel,
    id: torch.Tensor,
    exp: torch.Tensor,
    *,
    src_exp: Optional[torch.Tensor] = None,
    size: int = SECC_SIZE,
    dtype: Optional[torch.dtype] = None,
    chunk_size: int = 16,
    on_step: ProgressFn | None = None,
) -> SeccMaps:
    """cano / src / drv SECC maps for a clip: id [80], [1, 80] or per frame [T, 80] (upstream
    repeats one identity; cano and src use id[0]), exp [T, 64]; ``src_exp`` [64] defaults to exp[0]."""
    exp = exp.reshape(-1, N_EXP)
    id = id.reshape(-1, N_ID)
    src = exp[:1] if src_exp is None else src_exp.reshape(1, N_EXP).to(exp)
    first = torch.cat([torch.zeros_like(src), src])  # cano, src
    kw = dict(size=size, dtype=dtype, chunk_size=chunk_size)
    cano_src = render_secc(face_model, id[:1], first, **kw)
    drv = render_secc(face_model, id, exp, on_step=on_step, **kw)
    return SeccMaps(cano=cano_src[:1], src=cano_src[1:], drv=drv)
