"""Live avatar (issue 18): motion seams at window borders, and a live session's frame rate and
latency on the machine it runs on.

    python -m bench.live                       # both tables at the default sizes (see below)
    python -m bench.live --table borders --audio ../shared/data/80_vs_60_10s.wav
    python -m bench.live --table session --seconds 20
    python -m bench.live --tiny                # smoke test: tiny models, 2 s

Table "borders": a :class:`~mimictalk_lib.live.MotionStream` turns speech into motion hop by
hop; the frame-to-frame motion change |m[i+1] - m[i]| is averaged over the frames at window
borders (the last frame of one window's emitted block through the cross-faded frames of the
next) and over the frames inside windows. Rows: the live default (each window shown the motion
already generated as in-context prompt, 2 cross-faded frames), the same without cross-fade,
and independent windows (no in-context motion) for comparison. Random weights (no official
weights here): full-size ICS-A2M (35 M parameters) + HuBERT-large unless --tiny; the figure
says whether borders are rougher than the rest, not how good the motion looks.

Table "session": a live session as the server runs it (worker thread, real-time audio clock, a
consumer taking frames as a 25 fps video track does) on the tests' tiny avatar (64 px renderer,
tiny motion model and HuBERT, synthetic face model), fed 0.6 s of speech every 1.5 s. It reports
frames sent per second, frames dropped, and latency (speech in -> its first frame out). The
tiny avatar is the "reduced size" that runs on a CPU; the full 512 px renderer needs a GPU.
"""

from __future__ import annotations

import dataclasses
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch

from bench import _common as common

SAMPLE_RATE = 16_000
SPEECH_S, PAUSE_S = 0.6, 0.9


def _speech(path: str | None, seconds: float) -> np.ndarray:
    if path:
        from mimictalk_lib.a2m import load_audio

        return load_audio(path).numpy()[: int(seconds * SAMPLE_RATE)]
    from bench.a2m import speech_like

    return speech_like(seconds).numpy()


def borders(args) -> None:
    from mimictalk_lib.live import MotionStream, StreamSettings
    from mimictalk_lib.live.motion import SAMPLES_PER_FRAME, border_jumps
    from bench.a2m import _models

    hubert, a2m = _models(args.tiny, torch.device("cpu"), torch.float32)
    wav = _speech(args.audio, args.seconds)
    base = StreamSettings(steps=args.steps)
    variants = [("in-context prompt + cross-fade (live default)", base),
                ("in-context prompt, no cross-fade", dataclasses.replace(base, fade=0)),
                ("independent windows (no in-context motion)", dataclasses.replace(base, context=0, fade=0))]
    short = ["live default", "no cross-fade", "independent windows"]
    rows, motions = [], []
    for (label, s), name in zip(variants, short):
        stream = MotionStream(a2m, hubert, None, s, pitch="off", generator=torch.Generator().manual_seed(0))
        hop = s.hop * SAMPLES_PER_FRAME
        start = time.perf_counter()
        motion = torch.cat([stream.push(wav[k: k + hop]) for k in range(0, len(wav) - hop + 1, hop)])
        per_hop = (time.perf_counter() - start) / max(1, len(wav) // hop)
        motions.append((name, s, motion))
        border, inside = border_jumps(motion, s.hop, s.fade, first=s.hop - s.fade)
        rows.append([label, s.hop, s.context, s.fade, len(motion), f"{border.mean():.4f}", f"{inside.mean():.4f}",
                     f"{border.mean() / inside.mean():.2f}", f"{border.max() / inside.max():.2f}", f"{per_hop * 1000:.0f}"])
    print(f"# motion model: {'tiny' if args.tiny else 'full-size'} ICS-A2M + HuBERT, random weights; audio: "
          f"{args.audio or 'synthetic voiced signal'} ({len(wav) / SAMPLE_RATE:.1f} s); {base.steps} ODE grid points, "
          f"CFG {base.cfg_scale}, {base.method}")
    common.print_table(["windows", "hop", "context", "fade", "frames", "border jump (mean)", "inside jump (mean)",
                        "border / inside (mean)", "border / inside (max)", "ms per hop"], rows)
    if args.figure:
        _figure(args.figure, motions, "tiny" if args.tiny else "full-size")


def _figure(path: str, motions, size: str, frames: int = 100) -> None:
    """One panel per variant: |m[i+1] - m[i]| over the first `frames` frames (blue), window
    borders shaded grey (the frames counted as border jumps)."""
    import av

    from mimictalk_lib.adapt.report import CURVE_MARGIN, LINE_COLOUR, PANEL_HEIGHT, PANEL_WIDTH, figure, plot_panel

    panels = []
    for label, s, motion in motions:
        part = motion[: frames + 1]
        jumps = (part[1:] - part[:-1]).norm(dim=-1)
        panel = plot_panel([(range(len(jumps)), jumps.tolist(), LINE_COLOUR)], height=PANEL_HEIGHT, width=PANEL_WIDTH,
                           title=f"{label} (context {s.context}, fade {s.fade}): |m[i+1] - m[i]|")
        top, bottom = CURVE_MARGIN + 14, PANEL_HEIGHT - CURVE_MARGIN
        for start in range(s.hop - s.fade, len(jumps) + 1, s.hop):
            for i in range(max(0, start - 1), min(len(jumps), start + s.fade)):
                col = round(CURVE_MARGIN + i / max(1, len(jumps) - 1) * (PANEL_WIDTH - 1 - 2 * CURVE_MARGIN))
                area = panel[top:bottom, col]
                panel[top:bottom, col] = torch.where(area.sum(-1, keepdim=True) > 2.9, torch.tensor([0.8, 0.8, 0.8]), area)
        panels.append(panel)
    img = (figure(panels, columns=1)[0] * 255).round().to(torch.uint8).numpy()
    with av.open(path, "w", format="image2") as c:  # PNG through PyAV's encoder, as the tests write images
        stream = c.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = img.shape[1], img.shape[0], "rgb24"
        for packet in list(stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24"))) + list(stream.encode(None)):
            c.mux(packet)
    print(f"# figure ({size} model, first {frames} frames): {path}")


def session(args) -> None:
    from mimictalk_lib.live.avatar import load_avatar
    from tests.fixtures.tiny_a2m import speech_like
    from tests.nodes.tiny_assets import build

    with tempfile.TemporaryDirectory(prefix="mimictalk-bench-live-") as tmp:
        models = build(Path(tmp))["models"]
        avatar = load_avatar(models_dir=models, adapter="adapters/person.safetensors", renderer="tiny/mimictalk_renderer",
                             a2m="tiny/ics_a2m", hubert="tiny/hubert", pitch="off")
    warm = avatar.session(name="warm-up")
    warm.step(np.zeros(2 * avatar.settings.hop * 640, np.float32))
    live = avatar.session(name="bench").start()
    burst = speech_like(SPEECH_S).numpy()
    stop = threading.Event()

    def speaker():  # like a client posting TTS clips
        while not stop.wait(SPEECH_S + PAUSE_S):
            live.timeline.write(burst)

    def consumer():  # like the video track: at most 25 frames per second
        last = 0.0
        while not stop.is_set():
            gap = last + 0.04 - time.monotonic()
            if gap > 0:
                time.sleep(gap)
            if live.take_frame() is not None:
                last = time.monotonic()
            else:
                time.sleep(0.005)

    threads = [threading.Thread(target=speaker), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    time.sleep(args.seconds)
    summary, lat = live.summary(), np.array(live.stats.latencies)
    stop.set()
    for t in threads:
        t.join()
    live.close()
    clock_frames = summary["uptime_s"] * 25
    print(f"# tiny avatar ({avatar.renderer.model.cfg.image_resolution} px), hop {avatar.settings.hop} frames, "
          f"{avatar.settings.steps} ODE grid points, max lag {avatar.max_lag} s; {args.seconds:.0f} s run")
    common.print_table(
        ["device", "seconds", "frames sent", "frames sent/s", "dropped %", "speech events", "latency mean ms",
         "latency p90 ms", "latency max ms", "motion ms per hop", "render ms per frame"],
        [["cpu", f"{summary['uptime_s']:.1f}", summary["frames_sent"], f"{summary['frames_sent'] / summary['uptime_s']:.1f}",
          f"{100 * summary['frames_dropped'] / max(1, clock_frames):.0f}", len(lat),
          f"{lat.mean() * 1000:.0f}" if len(lat) else "-", f"{np.percentile(lat, 90) * 1000:.0f}" if len(lat) else "-",
          f"{lat.max() * 1000:.0f}" if len(lat) else "-", summary["motion_ms_per_step"], summary["render_ms_per_frame"]]])


def main() -> None:
    ap = common.parser(__doc__)
    ap.add_argument("--tiny", action="store_true", help="tiny models, 2 s: a smoke test of the script")
    ap.add_argument("--table", choices=("borders", "session", "both"), default="both")
    ap.add_argument("--seconds", type=float, default=None, help="audio length / session run time (default 10; tiny 2)")
    ap.add_argument("--audio", default=None, help="speech file for the borders table (default: a synthetic voiced signal)")
    ap.add_argument("--figure", default=None, help="also draw the borders table's motion changes into this PNG")
    ap.add_argument("--steps", type=int, default=6, help="ODE grid points per window (default 6, the live default)")
    args = ap.parse_args()
    args.seconds = common.tiny_default(args.seconds, 10.0, 2.0, args.tiny)
    common.print_machines(["cpu"])
    if args.table in ("borders", "both"):
        borders(args)
    if args.table in ("session", "both"):
        session(args)


if __name__ == "__main__":
    main()
