"""Eye blinks painted into SECC maps (upstream ``inference/edit_secc.py``, §1.6).

Schedule (``real3d_infer.py`` ``get_driving_motion``, blink_mode ``period``): at every frame
i = 0, 125, 250, ... (5 s at 25 fps) a blink of T = randint(8, 12) frames starts; frame i + t gets
the closure p(t) = 4t/T - 4t^2/T^2 (0 at t = 0, 1 at t = T/2); the last frame of the clip is never
blinked. Mode ``none`` leaves the maps alone.

Painting (``blink_eye_for_secc``), per frame, on the map quantised to 8 bits (v -> floor((v+1)/2*255)):

1. face = pixels with all three channels non-zero; in the upper-middle prior boxes (rows
   [H/4, H/2), columns [W/4, W/2) and [W/2, 3W/4)) the non-face pixels are the eye holes;
2. the search region is the hole rows (both eyes) x each eye's hole columns, grown by 4 pixels;
3. face pixels of the region within distance 5 of a hole pixel are dropped (smoother lids);
   the region's remaining non-face pixels form the eye mask;
4. per column, the eye pixels above p * mean_row + (1 - p) * min_row (upper lid) and below
   p * mean_row + (1 - p) * max_row (lower lid) are "closed";
5. each closed pixel copies the colour of its nearest remaining face pixel of the region.

Upstream runs this with sklearn KD-trees per frame on the CPU; here it is vectorised over frames in
torch. Nearest-face search is exact (separable: nearest in the column, then over columns) with
ties broken towards the upper row, then the left column, where the KD-tree order is unspecified.
Upstream also quantises the t = 0 frame of each blink (p = 0, otherwise unchanged); only frames
with p > 0 are processed here.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ..errors import InputError

BLINK_PERIOD = 125  # frames between blink starts: 5 s at 25 fps
BLINK_FRAMES = (8, 12)  # random.randint(8, 12), inclusive
MARGIN = 4  # "more_room" around the hole boxes
ERODE_RADIUS = 5  # face pixels within this distance of a hole are treated as eye
_FAR = 1 << 20  # "no pixel" distance / row sentinel


def blink_schedule(n_frames: int, mode: str = "period", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Eye closure per frame [n_frames] (float64, CPU) in [0, 1] (0 = open). ``mode`` is 'period'
    or 'none'; the blink lengths are drawn from ``generator`` (same seed, same schedule)."""
    p = torch.zeros(n_frames, dtype=torch.float64)
    if mode == "none":
        return p
    if mode != "period":
        raise InputError(f"blink mode: expected 'period' or 'none', got {mode!r}")
    for start in range(0, n_frames, BLINK_PERIOD):
        dur = int(torch.randint(BLINK_FRAMES[0], BLINK_FRAMES[1] + 1, (1,), generator=generator))
        t = torch.arange(dur, dtype=torch.float64)
        closure = 4 * t / dur - 4 * t**2 / dur**2
        stop = min(start + dur, n_frames - 1)  # upstream breaks before the last frame
        p[start:stop] = closure[: max(0, stop - start)]
    return p


def quantize_secc(secc: torch.Tensor) -> torch.Tensor:
    """[-1, 1] map -> integer levels 0..255 as upstream: ((v + 1) / 2 * 255) truncated."""
    return ((secc.float() + 1) / 2 * 255).clamp(min=0).floor()


def _dilate_disc(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels within Euclidean distance ``radius`` of a True pixel of mask [B, H, W] (zero outside):
    the union over row offsets dy of the row-shifted horizontal dilations of half-width
    floor(sqrt(radius^2 - dy^2))."""
    x = mask.float().unsqueeze(1)  # [B, 1, H, W]
    h = x.shape[2]
    out = torch.zeros_like(mask)
    for dy in range(-radius, radius + 1):
        a = int(math.isqrt(radius * radius - dy * dy))
        row = F.max_pool2d(x, (1, 2 * a + 1), stride=1, padding=(0, a))[:, 0] > 0  # [B, H, W]
        if dy >= 0:  # a True pixel at row y marks row y + dy
            out[:, dy:] |= row[:, : h - dy]
        else:
            out[:, : h + dy] |= row[:, -dy:]
    return out


def _nearest_source(face: torch.Tensor, query: torch.Tensor, band: int = 48) -> torch.Tensor:
    """Flat (row * W + col) index of the nearest True pixel of ``face`` [B, H, W], exact Euclidean
    (ties: upper row, then left column) at the ``query`` pixels; -1 where ``face`` is empty."""
    b, h, w = face.shape
    rows = torch.arange(h, device=face.device)
    # 1) nearest face pixel within each column: [B, H (query row), W] distance and row
    d_col = (rows.view(h, 1) - rows.view(1, h)).abs()  # [query, source]
    cost = torch.where(face.permute(0, 2, 1).unsqueeze(2), d_col.view(1, 1, h, h), _FAR)  # [B, W, Hq, Hs]
    best_d, best_r = cost.min(dim=-1)  # first minimum = upper row on ties
    best_d2 = (best_d.permute(0, 2, 1).float() ** 2).clamp(max=float(_FAR))  # [B, Hq, W]
    best_r = best_r.permute(0, 2, 1)
    # 2) over columns: min over c' of (c - c')^2 + d(r, c')^2, first within |c - c'| <= band
    #    (exact whenever the minimum found is <= band^2), else over all columns
    k = min(band, w - 1)
    padded = F.pad(best_d2, (k, k), value=float(_FAR))
    offs = torch.arange(-k, k + 1, device=face.device)
    total = padded.unfold(2, 2 * k + 1, 1) + (offs.float() ** 2)  # [B, H, W, 2k + 1]
    val, j = total.min(dim=-1)  # first minimum = left column on ties
    src_c = torch.arange(w, device=face.device) + offs[j]
    if k < w - 1 and bool(((val > k * k) & query).any()):
        cols = torch.arange(w, device=face.device)
        dc2 = ((cols.view(w, 1) - cols.view(1, w)) ** 2).float()  # [query, source]
        val, src_c = (dc2.view(1, 1, w, w) + best_d2.unsqueeze(2)).min(dim=-1)
    src_r = best_r.gather(2, src_c.clamp(0, w - 1))  # row of the nearest pixel in the chosen column
    return torch.where(val < _FAR, src_r * w + src_c, torch.full_like(src_c, -1))


def _blink_frames(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Paint blinks into quantised maps q [B, 3, H, W] (levels 0..255) with closures p [B] > 0."""
    b, _, h, w = q.shape
    dev = q.device
    # everything happens inside a window around the prior boxes (holes, region and erosion ring)
    reach = MARGIN + ERODE_RADIUS
    wy0, wy1 = max(0, h // 4 - reach), min(h, h // 2 + reach)
    wx0, wx1 = max(0, w // 4 - reach), min(w, w // 4 * 3 + reach)
    win = q[:, :, wy0:wy1, wx0:wx1]
    face = (win != 0).all(dim=1)  # [B, h', w']
    r = torch.arange(wy0, wy1, device=dev).view(1, -1, 1)  # absolute row / column numbers
    c = torch.arange(wx0, wx1, device=dev).view(1, 1, -1)
    in_rows = (r >= h // 4) & (r < h // 2)
    left_box = in_rows & (c >= w // 4) & (c < w // 2)
    right_box = in_rows & (c >= w // 2) & (c < w // 4 * 3)
    hole_l, hole_r = ~face & left_box, ~face & right_box  # coarse eye pixels
    hole = hole_l | hole_r
    ok = hole_l.flatten(1).any(1) & hole_r.flatten(1).any(1)  # upstream needs holes in both boxes

    def extent(mask: torch.Tensor, axis: torch.Tensor, dim: int):
        hit = mask.any(dim=dim)  # [B, L] along the remaining axis
        lo = torch.where(hit, axis, _FAR).amin(1)
        hi = torch.where(hit, axis, -_FAR).amax(1)
        return lo.view(b, 1, 1), hi.view(b, 1, 1)

    ar, ac = r.view(1, -1), c.view(1, -1)
    r0, r1 = extent(hole, ar, 2)
    l0, l1 = extent(hole_l, ac, 1)
    q0, q1 = extent(hole_r, ac, 1)
    band = (r >= r0 - MARGIN) & (r < r1 + MARGIN)  # python slices: end exclusive
    region = band & (((c >= l0 - MARGIN) & (c < l1 + MARGIN)) | ((c >= q0 - MARGIN) & (c < q1 + MARGIN)))
    near_hole = _dilate_disc(hole, ERODE_RADIUS)
    src = face & region & ~near_hole  # face pixels that may give colour
    eye = region & ~src

    # per column lid lines (float64 as upstream's numpy maths, where the device has it)
    fdt = torch.float32 if dev.type == "mps" else torch.float64
    rows = r.expand_as(eye)
    count = eye.sum(1, keepdim=True)  # [B, 1, W]
    mean = torch.where(eye, rows, 0).sum(1, keepdim=True).to(fdt) / count.clamp(1, h)
    lo = torch.where(eye, rows, _FAR).amin(1, keepdim=True).to(fdt)
    hi = torch.where(eye, rows, -_FAR).amax(1, keepdim=True).to(fdt)
    pp = p.to(dev, fdt).view(b, 1, 1)
    upper_line = pp * mean + (1 - pp) * lo
    lower_line = pp * mean + (1 - pp) * hi
    closed = eye & ((rows <= upper_line) | (rows >= lower_line)) & ok.view(b, 1, 1)

    # nearest source pixel, searched inside the bounding box of the regions of these frames
    ys, xs = region.any(2).any(0).nonzero(), region.any(1).any(0).nonzero()
    if ys.numel() == 0 or not closed.any():
        return q
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1  # window coords
    closed = closed[:, y0:y1, x0:x1]
    nearest = _nearest_source(src[:, y0:y1, x0:x1], closed)  # [B, h'', w''] flat index in the crop
    crop = win[:, :, y0:y1, x0:x1]
    cw = x1 - x0
    take = closed & (nearest >= 0)
    fi, fr, fc = take.nonzero(as_tuple=True)
    n = nearest[fi, fr, fc]
    out = q.clone()
    out[fi, :, fr + y0 + wy0, fc + x0 + wx0] = crop[fi, :, n // cw, n % cw]
    return out


def apply_blink(secc: torch.Tensor, closure: torch.Tensor, *, chunk_size: int = 4) -> torch.Tensor:
    """Close the eyes of SECC maps [T, 3, H, W] (in [-1, 1]) by ``closure`` [T] in [0, 1].

    Frames with closure 0 are returned unchanged; processed frames come back on upstream's 8-bit
    grid (level / 127.5 - 1), in the input dtype."""
    if secc.dim() != 4 or secc.shape[1] != 3 or closure.shape != (secc.shape[0],):
        raise InputError(
            f"apply_blink: expected secc [T, 3, H, W] and closure [T], got {list(secc.shape)} and {list(closure.shape)}"
        )
    if closure.min() < 0 or closure.max() > 1:
        raise InputError(f"apply_blink: closure must lie in [0, 1], got [{float(closure.min())}, {float(closure.max())}]")
    out = secc.clone()
    closure = closure.detach().cpu().double()
    frames = (closure > 0).nonzero().squeeze(1)
    for s in range(0, frames.numel(), chunk_size):
        idx = frames[s : s + chunk_size]
        on_dev = idx.to(secc.device)
        q = _blink_frames(quantize_secc(secc[on_dev]), closure[idx])
        out[on_dev] = (q / 127.5 - 1).to(secc.dtype)
    return out
