"""Renderer throughput and peak memory at the full configuration, per chunk size.

    python -m bench.render                      # CPU (and CUDA fp32 + bf16 when available), 8 frames
    python -m bench.render --device cpu --frames 8 --chunks 1,4,8
    python -m bench.render --device cuda --dtypes fp32,bf16,fp16 --frames 64
    python -m bench.render --tiny --device cpu  # smoke test: tiny renderer, 2 frames, chunks 1,2
    python -m bench.render --upstream ~/MimicTalk   # side by side with an upstream checkout (CPU fp32)
    python -m bench.render --upstream ~/MimicTalk --dtypes fp32,bf16   # + our bf16 CPU opt-in

Random weights (speed does not depend on the values; spectral norms are set to their converged
state so activations stay finite, as with trained weights), deterministic sampling, the MimicTalk
layout by default. Each (device, dtype, chunk size) runs in a fresh subprocess so its peak memory
is its own: CUDA = torch.cuda.max_memory_allocated, CPU = the process's peak resident set (model
weights included). One warm-up chunk is rendered first and not timed. "CPU s/frame" is the
process CPU time (all threads): robust on a shared machine, and on a GPU the host-side cost.

``--upstream PATH`` (an upstream MimicTalk checkout the user fetched; nothing of it is committed)
times upstream's renderer and ours on the same random full-size weights (MimicTalk layout), inputs
and threads, one frame per forward as ``inference/mimictalk_infer.py`` renders, both in
deterministic sampling (upstream's ``sample_pdf(det=True)`` and the stratified jitter at its mean,
patched in the child only), alternating ours / upstream ``--rounds`` times in one run. It prints
each side's s/frame, the ratio and the largest difference of the 512² images. Ours encodes the
per-identity inputs (torso reference, background) once, upstream per frame; that one-off cost is
printed on its own line. Upstream's child needs ``timm`` and ``mmcv`` only for three layer helpers
and one conv-BN-ReLU block of the SECC backbone; when they are not installed the child uses small
stand-ins (listed in the output as stubbed): ``DropPath`` (identity at inference), ``to_2tuple``,
``trunc_normal_`` (initialisation only; the weights are loaded) and ``ConvModule`` (conv, BN, ReLU).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time

import torch

from bench import _common as common
from bench import _upstream

FULL_FRAMES, FULL_CHUNKS = 8, "1,4,8"
TINY_FRAMES, TINY_CHUNKS = 2, "1,2"
# A frontal camera of the official convention: c2w (4x4, row-major) then normalised intrinsics.
CAMERA = (1, 0, 0, 0, 0, -1, 0, 0.006, 0, 0, -1, 2.861, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0)


def _worker(args: argparse.Namespace) -> None:
    from mimictalk_lib.renderer import Renderer, RendererConfig, RenderSource
    from mimictalk_lib.renderer.volume import CAMERA_DIM
    from tests.fixtures.tiny_renderer import converge_spectral_norms_

    device, dtype, chunk = torch.device(args.device), common.DTYPES[args.dtypes], int(args.chunks)
    torch.manual_seed(0)
    cfg = RendererConfig.tiny(args.layout) if args.tiny else RendererConfig.full(args.layout)
    model = converge_spectral_norms_(Renderer(cfg).eval()).to(device=device, dtype=dtype)

    t, side, p = args.frames, cfg.secc_resolution, cfg.plane_resolution
    g = torch.Generator().manual_seed(0)

    def img(n: int, c: int = 3) -> torch.Tensor:
        return torch.rand(n, c, side, side, generator=g) * 2 - 1

    cam = torch.tensor(CAMERA)
    assert cam.numel() == CAMERA_DIM
    source = RenderSource(
        cano_planes=torch.randn(1, 3, cfg.plane_channels, p, p, generator=g) * 0.5,
        cano_secc=img(1), src_secc=img(1), kp_s=torch.rand(1, 68, 3, generator=g) * 2 - 1,
        ref_torso=img(1), bg=img(1), segmap=torch.rand(1, 6, side, side, generator=g).round(),
    )
    frames = dict(drv_secc=img(t), camera=cam.repeat(t, 1), kp_d=torch.rand(t, 68, 3, generator=g) * 2 - 1)
    source = RenderSource(*(v.to(device) for v in vars(source).values()))
    frames = {k: v.to(device) for k, v in frames.items()}
    with torch.inference_mode():
        prepared = model.prepare_source(source)  # per identity, once (not timed)
    model.render_frames(prepared, **{k: v[:chunk] for k, v in frames.items()}, chunk_size=chunk, output_device="cpu")

    common.reset_peak(device)
    cpu_start = time.process_time()
    _, seconds = common.timed(lambda: model.render_frames(prepared, **frames, chunk_size=chunk, output_device="cpu"), device)
    common.emit({"seconds": seconds, "cpu_seconds": time.process_time() - cpu_start,
                 "peak_bytes": common.peak_bytes(device)})


# --- side by side with upstream -------------------------------------------------------------------

UPSTREAM_CONFIG = "egs/os_avatar/secc_img2plane_torso.yaml"
UPSTREAM_HPARAMS = "triplane_feature_type=trigrid_v2,triplane_depth=3,htbsr_head_threshold=1.0"  # MimicTalk's base
UPSTREAM_LORA = {"lora_mode": "secc2plane_sr", "lora_r": 2}  # a personalised checkpoint's lora_args
PARITY_TOLERANCE = 1e-5  # the fp32 noise floor the renderer tests allow (docs/fidelity.md: 1.5e-6 measured)


def _side_by_side_inputs(cfg, frames: int, seed: int = 0) -> tuple[dict, dict]:
    """(per-identity inputs, per-frame inputs) at the full size, CPU fp32."""
    g = torch.Generator().manual_seed(seed)
    side, p = cfg.secc_resolution, cfg.plane_resolution

    def img(n: int, c: int = 3) -> torch.Tensor:
        return torch.rand(n, c, side, side, generator=g) * 2 - 1

    labels = torch.zeros(1, side, side, dtype=torch.long)
    labels[:, side // 2:] = 4  # clothes in the lower half, as a real segmentation has a torso
    labels[:, side // 4: side // 2, side // 3: 2 * side // 3] = 3  # face skin
    ident = dict(cano_planes=torch.randn(1, 3, cfg.plane_channels, p, p, generator=g) * 0.5, cano_secc=img(1),
                 src_secc=img(1), kp_s=torch.cat([torch.rand(1, 68, 2, generator=g) * 1.6 - 0.8, torch.zeros(1, 68, 1)], -1),
                 ref_torso=img(1), bg=img(1),
                 segmap=torch.nn.functional.one_hot(labels, 6).permute(0, 3, 1, 2).float())
    kp_d = ident["kp_s"] + torch.randn(frames, 68, 3, generator=g) * 0.03 * torch.tensor([1.0, 1.0, 0.0])
    per_frame = dict(drv_secc=img(frames), camera=torch.tensor(CAMERA).repeat(frames, 1), kp_d=kp_d)
    return ident, per_frame


def _side_by_side(args: argparse.Namespace) -> None:
    from mimictalk_lib.renderer import Renderer, RendererConfig, RenderSource, load_renderer
    from mimictalk_lib.utils import cpu_bf16_native
    from tests.fixtures.tiny_renderer import converge_spectral_norms_

    root = _upstream.checkout(args.upstream, required=(UPSTREAM_CONFIG, "modules/real3d/secc_img2plane_torso.py"))
    threads = args.threads
    torch.set_num_threads(threads)
    common.print_machines(["cpu"])
    torch.manual_seed(0)
    # A MimicTalk personalised checkpoint's layout (base + official LoRA r=2 on secc2plane_sr, 1085
    # keys): upstream applies the LoRA on the fly every frame, ours merges it at load.
    cfg = RendererConfig.full("mimictalk").with_lora(UPSTREAM_LORA["lora_r"], UPSTREAM_LORA["lora_mode"])
    layout = Renderer(cfg).eval()
    _upstream.random_state_dict(layout, seed=0)
    converge_spectral_norms_(layout)  # finite activations, as trained weights have
    state = {k: v.detach().clone() for k, v in layout.state_dict().items()}
    del layout
    model = load_renderer(state).model
    ident, per_frame = _side_by_side_inputs(cfg, args.frames)
    n = args.frames
    with torch.inference_mode():
        start = time.perf_counter()
        prepared = model.prepare_source(RenderSource(**ident))  # once per identity
        prepare_s = time.perf_counter() - start
        model.render(prepared, **{k: v[:1] for k, v in per_frame.items()})  # warm-up, not timed

    ours_s, theirs_s, ours_img, theirs_img, stubbed = [], [], None, None, []
    ours_cpu, theirs_cpu = [], []  # process CPU seconds per frame (all threads): steadier on a shared machine
    bf16 = args.dtypes == "fp32,bf16"
    if bf16 and not cpu_bf16_native():
        raise _upstream.UpstreamError("--dtypes fp32,bf16: this CPU has no native bf16 (AVX512-BF16 / AMX)")
    bf16_s, bf16_cpu, bf16_img = [], [], None
    for round_ in range(args.rounds):
        with torch.inference_mode():
            start, cpu = time.perf_counter(), time.process_time()
            ours_img = torch.cat([model.render(prepared, **{k: v[i:i + 1] for k, v in per_frame.items()}).image
                                  for i in range(n)])
            ours_s.append((time.perf_counter() - start) / n)
            ours_cpu.append((time.process_time() - cpu) / n)
        print(f"# round {round_ + 1}: ours {ours_s[-1]:.2f} s/frame (load average {_upstream.load_average()})",
              file=sys.stderr, flush=True)
        up = _upstream.run(root, "render", dict(root=str(root), state=state, **ident, **per_frame), threads)
        theirs_s.append(up["seconds_per_frame"])
        theirs_cpu.append(up["cpu_seconds_per_frame"])
        theirs_img, stubbed = up["image"], up["stubbed"]
        print(f"# round {round_ + 1}: upstream {theirs_s[-1]:.2f} s/frame (load average {_upstream.load_average()})",
              file=sys.stderr, flush=True)
        if bf16:
            got = _upstream.run(_upstream.ROOT, "render", dict(ours_bf16=True, state=state, **ident, **per_frame), threads)
            bf16_s.append(got["seconds_per_frame"])
            bf16_cpu.append(got["cpu_seconds_per_frame"])
            bf16_img = got["image"]
            print(f"# round {round_ + 1}: ours bf16 {bf16_s[-1]:.2f} s/frame (load average {_upstream.load_average()})",
                  file=sys.stderr, flush=True)

    ours_mean, theirs_mean = sum(ours_s) / len(ours_s), sum(theirs_s) / len(theirs_s)
    diff = (ours_img - theirs_img).abs().max().item()
    # The fp32 noise floor of these random weights: ours with the LoRA applied on the fly (upstream's
    # arithmetic) against ours with it merged (untimed).
    with torch.inference_mode():
        fly = load_renderer(state, merge_lora=False).model
        floor = (torch.cat([fly.render(RenderSource(**ident), **{k: v[i:i + 1] for k, v in per_frame.items()}).image
                            for i in range(n)]) - ours_img).abs().max().item()
    tolerance = max(PARITY_TOLERANCE, 2 * floor)
    print(f"# {n} frames per round, {args.rounds} rounds alternating, {threads} threads, fp32, deterministic sampling; "
          f"load average {_upstream.load_average()}" + (f"; upstream stand-ins: {', '.join(stubbed)}" if stubbed else ""))
    print(f"# ours: per-identity preparation (torso + background encoders, once per identity) {prepare_s:.2f} s")
    print(f"# parity: max |ours - upstream| of the 512² images = {diff:.1e} {'<=' if diff <= tolerance else '>'} "
          f"tolerance {tolerance:.1e} (max of {PARITY_TOLERANCE:.0e} and twice the noise floor {floor:.1e} = ours "
          "with the LoRA merged vs applied on the fly)")
    ours_cpu_mean, theirs_cpu_mean = sum(ours_cpu) / len(ours_cpu), sum(theirs_cpu) / len(theirs_cpu)
    rows = []
    if bf16:
        mse = ((bf16_img - ours_img) / 2).square().mean().item()  # on the [0, 1] scale
        print(f"# ours bf16 (opt-in, not exact): PSNR against our exact fp32 image {10 * math.log10(1 / mse):.1f} dB, "
              f"max |diff| {(bf16_img - ours_img).abs().max().item():.1e}")
        mean, cpu_mean = sum(bf16_s) / len(bf16_s), sum(bf16_cpu) / len(bf16_cpu)
        rows = [["ours bf16 opt-in (`render_frames`, batch 1)", " / ".join(f"{t:.2f}" for t in bf16_s), f"{mean:.2f}",
                 f"{1 / mean:.3f}", f"{theirs_mean / mean:.2f}x", f"{cpu_mean:.2f}", f"{theirs_cpu_mean / cpu_mean:.2f}x",
                 f"{(bf16_img - theirs_img).abs().max().item():.1e}"]]
    common.print_table(
        ["implementation", "s/frame per round", "s/frame (mean)", "frames/s", "speed-up (wall)", "CPU s/frame",
         "speed-up (CPU time)", "max |diff| of the 512² image"],
        [["upstream (per-frame forward)", " / ".join(f"{t:.2f}" for t in theirs_s), f"{theirs_mean:.2f}",
          f"{1 / theirs_mean:.3f}", "1.00x", f"{theirs_cpu_mean:.2f}", "1.00x", "-"],
         ["ours (`Renderer.render`, batch 1)", " / ".join(f"{t:.2f}" for t in ours_s), f"{ours_mean:.2f}",
          f"{1 / ours_mean:.3f}", f"{theirs_mean / ours_mean:.2f}x", f"{ours_cpu_mean:.2f}",
          f"{theirs_cpu_mean / ours_cpu_mean:.2f}x", f"{diff:.1e}"]] + rows)


def _shim_missing_upstream_helpers() -> None:
    """Stand-ins for the few ``timm`` / ``mmcv`` helpers upstream's renderer imports, used only
    when those packages are absent (both pull heavy dependencies such as torchvision)."""
    from torch import nn

    if importlib.util.find_spec("timm") is None:
        class DropPath(nn.Module):  # stochastic depth: the identity at inference
            def __init__(self, drop_prob: float = 0.0):
                super().__init__()
                self.drop_prob = drop_prob

            def forward(self, x):
                if self.training and self.drop_prob > 0:
                    raise RuntimeError("bench stand-in DropPath: inference only")
                return x

        layers = dict(DropPath=DropPath, trunc_normal_=nn.init.trunc_normal_,
                      to_2tuple=lambda x: tuple(x) if isinstance(x, (tuple, list)) else (x, x))
        _install("timm", {"models.layers": layers, "models.registry": dict(register_model=lambda f: f),
                          "models.vision_transformer": dict(_cfg=lambda **kw: kw)})
    if importlib.util.find_spec("mmcv") is None:
        class ConvModule(nn.Module):  # conv (no bias before a norm) -> BN -> ReLU, mmcv's key names
            def __init__(self, in_channels, out_channels, kernel_size, norm_cfg=None, **kwargs):
                super().__init__()
                self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2,
                                      bias=norm_cfg is None)
                self.bn = nn.BatchNorm2d(out_channels) if norm_cfg is not None else nn.Identity()
                self.activate = nn.ReLU(inplace=True)

            def forward(self, x):
                return self.activate(self.bn(self.conv(x)))

        _install("mmcv", {"cnn": dict(ConvModule=ConvModule)})


UNUSED_PREFIX = "cano_img2plane_backbone."


class _UnusedBackbone(torch.nn.Module):
    """Construction-only stand-in for a module the timed path never runs."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, *args, **kwargs):
        raise RuntimeError("bench/render.py: upstream's canonical backbone is a stand-in and was not expected to run")


def _install(package: str, submodules: dict, record: str = "") -> None:
    """Put stand-in modules ``package`` and ``package.<dotted>`` (with ``attrs``) in sys.modules."""
    import types

    sys.modules.setdefault(package, types.ModuleType(package, "bench/render.py stand-in"))
    for dotted, attrs in submodules.items():
        parts = [p for p in dotted.split(".") if p]
        for i in range(1, len(parts) + 1):
            name = ".".join([package, *parts[:i]])
            sys.modules.setdefault(name, types.ModuleType(name, "bench/render.py stand-in"))
        vars(sys.modules[".".join([package, *parts])]).update(attrs)
    _upstream._STUBBED.append(record or f"{package} (stand-in)")


def _child(inputs: dict) -> dict:
    return _ours_bf16_child(inputs) if inputs.get("ours_bf16") else _upstream_child(inputs)


def _ours_bf16_child(inputs: dict) -> dict:
    """Ours in the bf16 CPU opt-in, in a process of its own (alternating fp32 and bf16 models in one
    process made the bf16 frames ~3x slower): the same weights, inputs and frames, one per call."""
    from mimictalk_lib.renderer import RenderSource, load_renderer

    model = load_renderer(inputs["state"], dtype=torch.bfloat16).model
    fields = RenderSource.__dataclass_fields__
    with torch.inference_mode():
        prepared = model.prepare_source(RenderSource(**{k: inputs[k] for k in fields}))
    per_frame = {k: inputs[k] for k in ("drv_secc", "camera", "kp_d")}
    n = per_frame["camera"].shape[0]

    def frames() -> torch.Tensor:
        return torch.cat([model.render_frames(prepared, **{k: v[i:i + 1] for k, v in per_frame.items()}).image
                          for i in range(n)])

    frames()  # warm-up (and the channels-last weights), not timed
    start, cpu = time.perf_counter(), time.process_time()
    images = frames()
    return {"seconds_per_frame": (time.perf_counter() - start) / n, "cpu_seconds_per_frame": (time.process_time() - cpu) / n,
            "image": images.float()}


def _upstream_child(inputs: dict) -> dict:
    """In the child (``PYTHONPATH`` = the checkout): build upstream's renderer as
    ``inference/mimictalk_infer.py`` does, load the weights, render the frames one by one."""
    import functools
    import os

    _shim_missing_upstream_helpers()
    _upstream.require(["yaml", "einops"], "renderer")
    # Imported by upstream modules, never run on the timed path: torchvision (the face-vid2vid
    # losses and head-pose net), OpenCV and imageio (image file helpers).
    _upstream.stub(["torchvision", "cv2", "imageio"])
    # The canonical image->plane backbone is never run either (MimicTalk renders from the learned
    # tri-grid, ``use_cached_backbone=True``) and needs torchvision's ResNet to be built: a
    # construction-only stand-in; its weights are left out of the (otherwise strict) load.
    _install("modules.img2plane.img2plane_model", {"": dict(Img2PlaneModel=_UnusedBackbone)}, record="upstream Img2PlaneModel (never run)")
    cwd = os.getcwd()
    os.chdir(inputs["root"])  # upstream's config chain names its base files relative to the checkout
    try:
        from utils.commons.hparams import hparams, set_hparams

        set_hparams(config=UPSTREAM_CONFIG, hparams_str=UPSTREAM_HPARAMS, print_hparams=False)
        from modules.eg3ds.volumetric_rendering.renderer import ImportanceRenderer
        from modules.real3d.secc_img2plane_torso import OSAvatarSECC_Img2plane_Torso

        # Building the SegFormer loads ImageNet weights from checkpoints/pretrained_ckpts/mit_b0.pth (non
        # strictly); every one of them is replaced by the state dict below, so a missing file loads nothing.
        load = torch.load
        torch.load = lambda f, *a, **k: {} if isinstance(f, str) and "pretrained_ckpts/mit_" in f and not os.path.exists(f) else load(f, *a, **k)
        try:
            model = OSAvatarSECC_Img2plane_Torso(hparams, lora_args=dict(UPSTREAM_LORA))
        finally:
            torch.load = load
    finally:
        os.chdir(cwd)
    skipped = {k for k in inputs["state"] if k.startswith(UNUSED_PREFIX)}
    missing, unexpected = model.load_state_dict({k: v for k, v in inputs["state"].items() if k not in skipped}, strict=False)
    missing = [k for k in missing if not k.startswith(UNUSED_PREFIX)]
    if missing or unexpected:
        raise _upstream.UpstreamError(f"the weights do not load into upstream's renderer: missing {missing[:5]}, "
                                      f"unexpected {unexpected[:5]}")
    model.eval()

    # Deterministic sampling in upstream's own code paths (this child only).
    sample_pdf, stratified = ImportanceRenderer.sample_pdf, ImportanceRenderer.sample_stratified

    @functools.wraps(stratified)
    def stratified_at_mean(self, *args, **kwargs):
        rand_like = torch.rand_like
        torch.rand_like = lambda t, **kw: torch.full_like(t, 0.5)
        try:
            return stratified(self, *args, **kwargs)
        finally:
            torch.rand_like = rand_like

    ImportanceRenderer.sample_pdf = functools.partialmethod(sample_pdf, det=True)
    ImportanceRenderer.sample_stratified = stratified_at_mean

    if not torch.cuda.is_available():
        # Upstream's torso warp makes its coordinate grids with hard-coded ``.cuda()``: on a CPU-only
        # machine those calls stay on the CPU (this child only).
        torch.Tensor.cuda = lambda self, *args, **kwargs: self
    model._last_cano_planes = inputs["cano_planes"]
    n = inputs["camera"].shape[0]

    def frame(i: int) -> torch.Tensor:
        cond = {"cond_cano": inputs["cano_secc"], "cond_src": inputs["src_secc"], "cond_tgt": inputs["drv_secc"][i:i + 1],
                "ref_torso_img": inputs["ref_torso"], "bg_img": inputs["bg"], "segmap": inputs["segmap"],
                "kp_s": inputs["kp_s"], "kp_d": inputs["kp_d"][i:i + 1]}
        out = model.forward(img=None, camera=inputs["camera"][i:i + 1], cond=cond, ret={}, cache_backbone=False,
                            use_cached_backbone=True)
        return out["image"]

    with torch.no_grad():
        frame(0)  # warm-up, not timed
        start, cpu = time.perf_counter(), time.process_time()
        images = torch.cat([frame(i) for i in range(n)])
        seconds, cpu = (time.perf_counter() - start) / n, (time.process_time() - cpu) / n
    return {"seconds_per_frame": seconds, "cpu_seconds_per_frame": cpu, "image": images}


def main() -> None:
    ap = common.parser(__doc__)
    common.add_common_args(ap, dtypes=("fp32", "bf16", "fp16"))
    ap.add_argument("--frames", type=int, default=None,
                    help=f"frames rendered per measurement (default {FULL_FRAMES}; --tiny: {TINY_FRAMES})")
    ap.add_argument("--chunks", default=None,
                    help=f"comma list of chunk sizes (default {FULL_CHUNKS}; --tiny: {TINY_CHUNKS})")
    ap.add_argument("--layout", default="mimictalk", choices=["mimictalk", "real3d"])
    _upstream.add_argument(ap, "renderer")
    ap.add_argument("--rounds", type=int, default=2, help="--upstream: alternating ours / upstream rounds (default 2)")
    ap.add_argument("--threads", type=int, default=2, help="--upstream: intra-op threads of both sides (default 2)")
    args = ap.parse_args()
    if args.upstream_child:
        return _upstream.child_main(args.upstream_child, _child)
    if args.upstream:
        args.frames = args.frames or 2
        try:
            if args.tiny or args.device not in (None, "cpu") or args.dtypes not in (None, "fp32", "fp32,bf16"):
                raise _upstream.UpstreamError("it compares the full-size renderer on the CPU in fp32; leave out "
                                              "--tiny/--device and give --dtypes fp32 or fp32,bf16 (adds our bf16 "
                                              "opt-in, in a process of its own)")
            return _side_by_side(args)
        except _upstream.UpstreamError as exc:
            ap.error(str(exc))
    args.frames = common.tiny_default(args.frames, FULL_FRAMES, TINY_FRAMES, args.tiny)
    args.chunks = common.tiny_default(args.chunks, FULL_CHUNKS, TINY_CHUNKS, args.tiny)
    if args.worker:
        return _worker(args)

    configs = common.plan(ap, args, allowed=("fp32", "bf16", "fp16"), cpu_bf16=True)
    rows, failed = common.sweep("render", args, configs, "--chunks", common.comma_list(args.chunks, int),
                                extra=["--frames", str(args.frames), "--layout", args.layout])
    n = args.frames
    common.print_table(
        ["device", "dtype", "chunk", "frames", "s/frame (wall)", "frames/s", "CPU s/frame", "peak memory (GiB)"],
        [[r["device"], r["dtype"], r["value"], n, f"{r['seconds'] / n:.3f}", f"{n / r['seconds']:.2f}",
          f"{r['cpu_seconds'] / n:.2f}", f"{r['peak_bytes'] / 2**30:.2f}"] for r in rows])
    common.finish(failed)


if __name__ == "__main__":
    main()
