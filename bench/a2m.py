"""Audio -> motion speed and peak memory at the full sizes (HuBERT-large + ICS-A2M).

    python bench/a2m.py                                  # CPU fp32 + CUDA fp32/bf16 when available
    python bench/a2m.py --device cpu --seconds 10,60
    python bench/a2m.py --device cuda --dtypes fp32,bf16 --seconds 10,60,600

Random weights (speed does not depend on the values): HuBERT-large from its config
(facebook/hubert-large-ls960-ft sizes), ICS-A2M with auxiliary features (35 M parameters).
Input: a synthetic voiced signal; a 5 s style-clip prompt (125 frames of context). Sampling uses
upstream's defaults: 20 grid points (19 midpoint steps), CFG 1.5 (batched cond/null pair), and
our 1000-frame (40 s) windows. Rows time feature extraction (HuBERT clips, pYIN f0) and sampling
separately. Each (device, dtype, seconds) runs in a fresh subprocess so its peak memory is its
own: CUDA = torch.cuda.max_memory_allocated per stage, CPU = the process's peak resident set
(weights included). A 1 s warm-up of both models is not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
STYLE_FRAMES = 125  # 5 s style prompt


def speech_like(seconds: float, rate: int = 16_000):
    """A voiced-sounding test signal: a 110-230 Hz glide with harmonics, syllable-rate envelope."""
    import torch

    t = torch.arange(int(seconds * rate)) / rate
    f = 170 + 60 * torch.sin(2 * math.pi * 0.3 * t)
    phase = 2 * math.pi * torch.cumsum(f, 0) / rate
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t).clamp(min=0)
    gen = torch.Generator().manual_seed(0)
    return (0.3 * env * sum(torch.sin(k * phase) / k for k in (1, 2, 3, 4))
            + 0.01 * torch.randn(t.shape, generator=gen)).float()


def _worker(args: argparse.Namespace) -> None:
    sys.path.insert(0, str(ROOT))
    import resource

    import torch

    from mimictalk_lib.a2m import (
        A2MConfig, AudioFeatures, HubertEncoder, InContextAudio2MotionModel, StylePrompt,
        extract_audio_features, extract_f0, hubert_large_config, sample_motion,
    )

    device, dtype = torch.device(args.device), getattr(torch, DTYPES[args.dtype])
    torch.manual_seed(0)
    hubert = HubertEncoder.from_config(hubert_large_config(), device, dtype)
    a2m = InContextAudio2MotionModel(A2MConfig.full(use_aux_features=True)).to(device=device, dtype=dtype).eval()
    gen = torch.Generator().manual_seed(0)
    style = StylePrompt(torch.randn(STYLE_FRAMES, 64, generator=gen) * 0.3,
                        torch.randn(2 * STYLE_FRAMES, 1024, generator=gen) * 0.5,
                        torch.full((2 * STYLE_FRAMES,), 150.0))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def peak_mb() -> float:
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    warm = extract_audio_features(speech_like(1.0), hubert, sample_rate=16_000)
    sample_motion(a2m, warm, style, steps=3, generator=gen)
    sync()

    wav = speech_like(args.seconds)
    out = {"device": args.device, "dtype": args.dtype, "seconds": args.seconds}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    feats = extract_audio_features(wav, hubert, sample_rate=16_000, with_f0=False)
    sync()
    out["hubert_s"], out["hubert_mb"] = time.perf_counter() - t0, peak_mb()
    t0 = time.perf_counter()
    f0 = extract_f0(wav, feats.num_frames)
    out["f0_s"] = time.perf_counter() - t0
    feats = AudioFeatures(feats.hubert, f0, feats.num_samples)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    motion = sample_motion(a2m, feats, style, steps=20, cfg_scale=1.5, method="midpoint", generator=gen)
    sync()
    out["sample_s"], out["sample_mb"] = time.perf_counter() - t0, peak_mb()
    out["frames"] = motion.shape[0]
    print("RESULT " + json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, plus cuda if available)")
    parser.add_argument("--dtypes", default=None, help="comma list of fp32,bf16 (bf16 only on cuda)")
    parser.add_argument("--seconds", default="10,60", help="comma list of audio lengths in seconds")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.worker:
        args.seconds = float(args.seconds)
        args.dtype = args.dtypes
        return _worker(args)

    import torch

    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    for device in devices:
        dtypes = args.dtypes.split(",") if args.dtypes else (["fp32", "bf16"] if device == "cuda" else ["fp32"])
        for dtype in dtypes:
            if device == "cpu" and dtype != "fp32":
                continue  # half precision is refused on the CPU
            for sec in args.seconds.split(","):
                cmd = [sys.executable, __file__, "--worker", "--device", device, "--dtypes", dtype, "--seconds", sec]
                res = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
                line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
                if not line:
                    print(res.stdout[-2000:], res.stderr[-4000:], file=sys.stderr)
                    raise SystemExit(f"worker failed: {' '.join(cmd)}")
                rows.append(json.loads(line[0][7:]))
                print(f"  done {device} {dtype} {sec}s", file=sys.stderr, flush=True)

    print("| device | dtype | audio s | motion frames | HuBERT s | f0 s | sampling s | total s "
          "| x realtime | peak MB (features) | peak MB (sampling) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        total = r["hubert_s"] + r["f0_s"] + r["sample_s"]
        print(f"| {r['device']} | {r['dtype']} | {r['seconds']:.0f} | {r['frames']} | {r['hubert_s']:.2f} "
              f"| {r['f0_s']:.2f} | {r['sample_s']:.2f} | {total:.2f} | {r['seconds'] / total:.2f} "
              f"| {r['hubert_mb']:.0f} | {r['sample_mb']:.0f} |")


if __name__ == "__main__":
    main()
