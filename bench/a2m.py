"""Audio -> motion speed and peak memory at the full sizes (HuBERT-large + ICS-A2M).

    python -m bench.a2m                                  # CPU fp32 + CUDA fp32/bf16 when available
    python -m bench.a2m --device cpu --seconds 10,60
    python -m bench.a2m --device cuda --dtypes fp32,bf16 --seconds 10,60,600
    python -m bench.a2m --tiny --device cpu              # smoke test: tiny HuBERT + ICS-A2M, 2 s

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
import math

import torch

from bench import _common as common

FULL_SECONDS, TINY_SECONDS = "10,60", "2"
SAMPLE_RATE = 16_000  # HuBERT input rate
STYLE_FRAMES = 125  # 5 s style prompt at 25 fps
STEPS, CFG_SCALE = 20, 1.5  # upstream sampling defaults (20 grid points, midpoint)


def speech_like(seconds: float, rate: int = SAMPLE_RATE) -> torch.Tensor:
    """A voiced-sounding test signal: a 110-230 Hz glide with harmonics, syllable-rate envelope."""
    t = torch.arange(int(seconds * rate)) / rate
    f = 170 + 60 * torch.sin(2 * math.pi * 0.3 * t)
    phase = 2 * math.pi * torch.cumsum(f, 0) / rate
    env = 0.5 + 0.5 * torch.sin(2 * math.pi * 4 * t).clamp(min=0)
    gen = torch.Generator().manual_seed(0)
    return (0.3 * env * sum(torch.sin(k * phase) / k for k in (1, 2, 3, 4))
            + 0.01 * torch.randn(t.shape, generator=gen)).float()


def _models(tiny: bool, device: torch.device, dtype: torch.dtype):
    """HuBERT encoder and ICS-A2M (with auxiliary features), random weights, full or tiny."""
    from mimictalk_lib.a2m import A2MConfig, HubertEncoder, InContextAudio2MotionModel, hubert_large_config

    torch.manual_seed(0)
    if tiny:
        from tests.fixtures.tiny_a2m import tiny_hubert_config

        hubert_cfg, a2m_cfg = tiny_hubert_config(), A2MConfig.tiny(use_aux_features=True)
    else:
        hubert_cfg, a2m_cfg = hubert_large_config(), A2MConfig.full(use_aux_features=True)
    hubert = HubertEncoder.from_config(hubert_cfg, device, dtype)
    a2m = InContextAudio2MotionModel(a2m_cfg).to(device=device, dtype=dtype).eval()
    return hubert, a2m


def _worker(args: argparse.Namespace) -> None:
    from mimictalk_lib.a2m import AudioFeatures, StylePrompt, extract_audio_features, extract_f0, sample_motion
    from mimictalk_lib.a2m.pitch import resolve_pitch_tracker

    device, dtype, seconds = torch.device(args.device), common.DTYPES[args.dtypes], float(args.seconds)
    hubert, a2m = _models(args.tiny, device, dtype)
    gen = torch.Generator().manual_seed(0)
    style = StylePrompt(torch.randn(STYLE_FRAMES, a2m.cfg.motion_dim, generator=gen) * 0.3,
                        torch.randn(2 * STYLE_FRAMES, hubert.hidden_size, generator=gen) * 0.5,
                        torch.full((2 * STYLE_FRAMES,), 150.0))

    warm = extract_audio_features(speech_like(1.0), hubert, sample_rate=SAMPLE_RATE)
    sample_motion(a2m, warm, style, steps=3, generator=gen)
    common.sync(device)

    wav = speech_like(seconds)
    out = {"seconds": seconds}
    common.reset_peak(device)
    feats, out["hubert_s"] = common.timed(
        lambda: extract_audio_features(wav, hubert, sample_rate=SAMPLE_RATE, with_f0=False), device)
    out["hubert_bytes"] = common.peak_bytes(device)
    out["tracker"] = resolve_pitch_tracker(args.pitch_tracker)
    f0, out["f0_s"] = common.timed(lambda: extract_f0(wav, feats.num_frames, tracker=out["tracker"]),
                                   torch.device("cpu"))
    feats = AudioFeatures(feats.hubert, f0, feats.num_samples)
    common.reset_peak(device)
    motion, out["sample_s"] = common.timed(
        lambda: sample_motion(a2m, feats, style, steps=STEPS, cfg_scale=CFG_SCALE, method="midpoint", generator=gen),
        device)
    out["sample_bytes"] = common.peak_bytes(device)
    out["frames"] = motion.shape[0]
    common.emit(out)


def main() -> None:
    ap = common.parser(__doc__)
    common.add_common_args(ap)
    ap.add_argument("--seconds", default=None,
                    help=f"comma list of audio lengths in seconds (default {FULL_SECONDS}; --tiny: {TINY_SECONDS})")
    ap.add_argument("--pitch-tracker", default="auto", choices=["auto", "praat", "pyin"],
                    help="f0 tracker (auto: Praat when praat-parselmouth is installed, else pYIN)")
    args = ap.parse_args()
    args.seconds = common.tiny_default(args.seconds, FULL_SECONDS, TINY_SECONDS, args.tiny)
    if args.worker:
        return _worker(args)

    configs = common.plan(ap, args)
    rows, failed = common.sweep("a2m", args, configs, "--seconds", common.comma_list(args.seconds),
                                extra=["--pitch-tracker", args.pitch_tracker])
    table = []
    for r in rows:
        total = r["hubert_s"] + r["f0_s"] + r["sample_s"]
        table.append([r["device"], r["dtype"], f"{r['seconds']:.0f}", r["frames"], f"{r['hubert_s']:.2f}",
                      f"{r['f0_s']:.2f}", r["tracker"], f"{r['sample_s']:.2f}", f"{total:.2f}", f"{r['seconds'] / total:.2f}",
                      f"{r['hubert_bytes'] / 2**20:.0f}", f"{r['sample_bytes'] / 2**20:.0f}"])
    common.print_table(["device", "dtype", "audio s", "motion frames", "HuBERT s", "f0 s", "f0 tracker", "sampling s", "total s",
                        "x realtime", "peak MB (features)", "peak MB (sampling)"], table)
    common.finish(failed)


if __name__ == "__main__":
    main()
