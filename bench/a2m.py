"""Audio -> motion speed and peak memory at the full sizes (HuBERT-large + ICS-A2M).

    python -m bench.a2m                                  # CPU fp32 + CUDA fp32/bf16 when available
    python -m bench.a2m --device cpu --seconds 10,60
    python -m bench.a2m --device cuda --dtypes fp32,bf16 --seconds 10,60,600
    python -m bench.a2m --tiny --device cpu              # smoke test: tiny HuBERT + ICS-A2M, 2 s
    python -m bench.a2m --upstream ~/MimicTalk           # ICS-A2M sampling, upstream vs ours, 10 s

Random weights (speed does not depend on the values): HuBERT-large from its config
(facebook/hubert-large-ls960-ft sizes), ICS-A2M with auxiliary features (35 M parameters).
Input: a synthetic voiced signal; a 5 s style-clip prompt (125 frames of context). Sampling uses
upstream's defaults: 20 grid points (19 midpoint steps), CFG 1.5 (batched cond/null pair), and
our 1000-frame (40 s) windows. Rows time feature extraction (HuBERT clips, pYIN f0) and sampling
separately. Each (device, dtype, seconds) runs in a fresh subprocess so its peak memory is its
own: CUDA = torch.cuda.max_memory_allocated per stage, CPU = the process's peak resident set
(weights included). A 1 s warm-up of both models is not timed.

--upstream PATH (an upstream checkout, ``git clone https://github.com/yerfor/MimicTalk``; its
torchdiffeq and beartype must be installed) times ICS-A2M sampling side by side instead: the same
full-size random weights (from a seed, our key layout = upstream's), the same HuBERT features,
f0 and 5 s style prompt, the same initial noise, fp32 on the CPU with --threads threads. Ours runs
in this process, upstream's `InContextAudio2MotionModel.forward(train=False)` in a child process
(bench/_upstream.py), alternately, --repeats times, each after an untimed 3-step warm-up. Both
times cover encoding the audio condition and the 19 midpoint steps with CFG. The table gives every
repeat, the medians, their ratio, and the largest |ours - upstream| of the motion against the
parity tolerance (docs/fidelity.md). ``--dtypes fp32,bf16`` (CPUs with native bf16 only) also
times ours with bf16 weights, the library's non-exact CPU opt-in, in the same rounds, and prints
its speed-ups and its error against our fp32 motion (absolute and relative to the motion's std).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

from bench import _common as common
from bench import _upstream

FULL_SECONDS, TINY_SECONDS = "10,60", "2"
SAMPLE_RATE = 16_000  # HuBERT input rate
STYLE_FRAMES = 125  # 5 s style prompt at 25 fps
STEPS, CFG_SCALE = 20, 1.5  # upstream sampling defaults (20 grid points, midpoint)
TEMPERATURE = 0.3  # upstream CLI default
UPSTREAM_MODEL = "modules/audio2motion/cfm/icl_audio2motion_model.py"
PARITY_ATOL = 1e-6  # full sampling vs upstream measured 6e-7..7e-7 (docs/fidelity.md); tests/a2m use 1e-6
SEED = 0
# Random weights in a non-chaotic regime. With unit q/k-norm gains the attention logits reach
# +-640 (qk-RMSNorm to sqrt(64), logit scale 10): softmax is an argmax, and fp32 rounding
# differences grow 2-3x per layer (2e-6 after layer 1, ~2 after 16). Gains of 0.15 (logits within
# +-14) and N(0, 0.02^2) matrices keep two exact implementations within 1e-6 of each other.
RANDOM_WEIGHTS = {"matrix_std": 0.02, "gains": {"q_norm.gamma": 0.15, "k_norm.gamma": 0.15}}


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


# --- side by side with upstream (--upstream PATH) ----------------------------------------------


def _side_inputs(seconds: float) -> dict:
    """Random full-size inputs shared by both sides: HuBERT features and f0 at 50 Hz for the
    driving audio and the style prompt, the style motion, and the ODE's initial noise."""
    gen = torch.Generator().manual_seed(SEED + 1)
    t_a = 2 * round(seconds * 25)  # 50 Hz audio frames (even: motion is T_a / 2)

    def f0(n: int) -> torch.Tensor:  # a 110-230 Hz contour, unvoiced (0) every 7th 10-frame block
        k = torch.arange(n, dtype=torch.float32)
        hz = 170 + 60 * torch.sin(2 * math.pi * k / 150)
        return torch.where((k // 10) % 7 == 6, torch.zeros(()), hz)

    return {
        "hubert": torch.randn(t_a, 1024, generator=gen) * 0.5,
        "f0": f0(t_a),
        "style_motion": torch.randn(STYLE_FRAMES, 64, generator=gen) * 0.3,
        "style_hubert": torch.randn(2 * STYLE_FRAMES, 1024, generator=gen) * 0.5,
        "style_f0": f0(2 * STYLE_FRAMES),
        "seed": SEED + 2,
        "steps": STEPS, "cfg_scale": CFG_SCALE, "temperature": TEMPERATURE,
    }


def _upstream_noise(inp: dict) -> torch.Tensor:
    """The standard-normal initial state upstream draws after ``torch.manual_seed(seed)``: its
    inference path first draws a placeholder reference [1, N, 64] (multiplied by 0), then
    ``randn_like`` of it; the driving frames follow the style prompt's."""
    gen = torch.Generator().manual_seed(inp["seed"])
    n = STYLE_FRAMES + inp["hubert"].shape[0] // 2
    torch.randn(1, n, 64, generator=gen)
    return torch.randn(1, n, 64, generator=gen)[0, STYLE_FRAMES:]


def _upstream_child(inp: dict) -> dict:
    """Runs in the child (PYTHONPATH = the upstream checkout): build upstream's ICS-A2M, load our
    weights strictly, warm up, then time ``repeats`` samplings exactly as its inference scripts call it."""
    # cfm_wrapper imports torchode at module level; only its use_torchode=True path (off by
    # default, not timed) uses it. torchdiffeq's odeint and beartype's checks run in the timed path.
    _upstream.stub(["torchode"])
    _upstream.require(["torchdiffeq", "beartype"], "ICS-A2M sampling")
    from modules.audio2motion.cfm.icl_audio2motion_model import InContextAudio2MotionModel as Upstream

    model = Upstream(mode="icl_flow_matching", hparams={"use_aux_features": True})
    model.load_state_dict(inp["state_dict"], strict=True)
    model.eval()
    model.add_sample_to_context(inp["style_motion"][None], inp["style_hubert"][None], inp["style_f0"][None])
    t_a = inp["hubert"].shape[0]

    def sample(steps: int) -> torch.Tensor:
        batch = {"audio": inp["hubert"][None], "f0": inp["f0"][None].clone(), "y_mask": torch.ones(1, t_a // 2),
                 "blink": torch.zeros(1, t_a, 1, dtype=torch.long), "mouth_amp": torch.ones(1, 1)}
        ret: dict = {}
        torch.manual_seed(inp["seed"])
        with torch.no_grad():
            model.forward(batch, ret, train=False, temperature=inp["temperature"], denoising_steps=steps,
                          cond_scale=inp["cfg_scale"])
        return ret["pred"][0]

    sample(3)  # warm-up, not timed
    seconds, cpu_seconds, motion = [], [], None
    for _ in range(inp["repeats"]):
        cpu = time.process_time()
        motion, s = common.timed(lambda: sample(inp["steps"]), torch.device("cpu"))
        seconds.append(s)
        cpu_seconds.append(time.process_time() - cpu)
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "motion": motion.float().contiguous()}


def _side_by_side(args: argparse.Namespace) -> None:
    from mimictalk_lib.a2m import A2MConfig, AudioFeatures, InContextAudio2MotionModel, StylePrompt, build_a2m, sample_motion
    from mimictalk_lib.utils import cpu_bf16_native

    if args.tiny:
        raise _upstream.UpstreamError("it measures upstream's full-size model; leave out --tiny")
    if args.device not in (None, "cpu") or args.dtypes not in (None, "fp32", "fp32,bf16"):
        raise _upstream.UpstreamError("it compares on the CPU in fp32 (--dtypes fp32,bf16 adds our bf16 mode); "
                                      "leave out --device, or give --dtypes fp32 or fp32,bf16")
    with_bf16 = args.dtypes == "fp32,bf16"
    if with_bf16 and not cpu_bf16_native():
        raise _upstream.UpstreamError("--dtypes fp32,bf16 needs a CPU with native bf16 (AVX512-BF16 / AMX); "
                                      "this one has none: leave out --dtypes")
    root = _upstream.checkout(args.upstream, [UPSTREAM_MODEL])
    seconds = common.comma_list(args.seconds or "10", float)
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    model = InContextAudio2MotionModel(A2MConfig.full(use_aux_features=True)).eval()
    state_dict = _upstream.random_state_dict(model, SEED, **RANDOM_WEIGHTS)
    half = build_a2m(state_dict, "cpu", torch.bfloat16) if with_bf16 else None  # the library's opt-in
    print(f"# cpu: {common.machine('cpu')}; upstream: {root}", flush=True)
    rows, half_rows, worst = [], [], 0.0
    for sec in seconds:
        inp = _side_inputs(sec)
        feats = AudioFeatures(inp["hubert"], inp["f0"], inp["hubert"].shape[0] * 320)
        style = StylePrompt(inp["style_motion"], inp["style_hubert"], inp["style_f0"])
        noise = _upstream_noise(inp)

        def ours(steps: int = STEPS, net=model) -> torch.Tensor:
            return sample_motion(net, feats, style, steps=steps, cfg_scale=CFG_SCALE, temperature=TEMPERATURE,
                                 method="midpoint", noise=noise)

        ours(3)  # warm-up, not timed
        if half is not None:
            ours(3, half)
        load = [_upstream.load_average()]
        t_ours, t_up, cpu_ours, cpu_up, diff, t_half, cpu_half, half_err = [], [], [], [], 0.0, [], [], []
        for r in range(args.repeats):  # alternately: ours, (ours in bf16,) then upstream
            cpu = time.process_time()
            mine, s = common.timed(ours, torch.device("cpu"))
            cpu_ours.append(time.process_time() - cpu)
            t_ours.append(s)
            if half is not None:
                cpu = time.process_time()
                fast, s_half = common.timed(lambda: ours(STEPS, half), torch.device("cpu"))
                cpu_half.append(time.process_time() - cpu)
                t_half.append(s_half)
                half_err.append((fast - mine).abs())
            up = _upstream.run(root, "a2m", {**inp, "state_dict": state_dict, "repeats": 1}, args.threads)
            t_up.extend(up["seconds"])
            cpu_up.extend(up["cpu_seconds"])
            diff = max(diff, float((mine - up["motion"]).abs().max()))
            print(f"# {sec:g} s repeat {r + 1}: ours {s:.2f} s, " + (f"ours bf16 {t_half[-1]:.2f} s, " if t_half else "")
                  + f"upstream {up['seconds'][0]:.2f} s"
                  + (f" (stubbed: {', '.join(up['stubbed'])})" if up["stubbed"] else ""), file=sys.stderr, flush=True)
        load.append(_upstream.load_average())
        worst = max(worst, diff)
        med_ours, med_up = statistics.median(t_ours), statistics.median(t_up)
        cpu_o, cpu_u = statistics.median(cpu_ours), statistics.median(cpu_up)
        rows.append([f"{sec:g}", mine.shape[0], args.threads, args.repeats,
                     " / ".join(f"{v:.2f}" for v in t_ours), " / ".join(f"{v:.2f}" for v in t_up),
                     f"{med_ours:.2f}", f"{med_up:.2f}", f"{med_up / med_ours:.2f}x",
                     f"{cpu_o:.2f} / {cpu_u:.2f}", f"{cpu_u / cpu_o:.2f}x", f"{diff:.1e}", " -> ".join(load)])
        if half is not None:
            err, std = half_err[-1], float(mine.std())
            med_half, cpu_h = statistics.median(t_half), statistics.median(cpu_half)
            half_rows.append([f"{sec:g}", args.repeats, " / ".join(f"{v:.2f}" for v in t_half), f"{med_half:.2f}",
                              f"{med_up / med_half:.2f}x", f"{med_ours / med_half:.2f}x", f"{cpu_h:.2f}",
                              f"{cpu_u / cpu_h:.2f}x / {cpu_o / cpu_h:.2f}x", f"{float(err.max()):.1e}",
                              f"{float(err.max()) / std:.2%}", f"{float(err.mean()) / std:.2%}", " -> ".join(load)])
    common.print_table(["audio s", "motion frames", "threads", "repeats", "ours s (each)", "upstream s (each)",
                        "ours s (median)", "upstream s (median)", "speed-up", "CPU s ours / upstream (median)",
                        "speed-up (CPU s)", "max |ours - upstream|", "load average (1/5/15 min)"], rows)
    if half_rows:
        print("\nours with bf16 weights (build_a2m(..., dtype=torch.bfloat16), the CPU opt-in; not exact), "
              "timed in the same rounds; its error is against our fp32 motion:")
        common.print_table(["audio s", "repeats", "ours bf16 s (each)", "ours bf16 s (median)", "speed-up vs upstream",
                            "speed-up vs ours fp32", "CPU s (median)", "speed-up (CPU s) vs upstream / ours fp32",
                            "max |bf16 - fp32|", "max / motion std", "mean / motion std",
                            "load average (1/5/15 min)"], half_rows)
    ok = worst <= PARITY_ATOL
    print(f"\nparity: max |ours - upstream| {worst:.1e} {'<=' if ok else '>'} tolerance {PARITY_ATOL:.0e}")
    if not ok:
        raise SystemExit(f"ours and upstream differ by {worst:.1e}, more than the parity tolerance {PARITY_ATOL:.0e}")


def main() -> None:
    ap = common.parser(__doc__)
    common.add_common_args(ap)
    ap.add_argument("--seconds", default=None,
                    help=f"comma list of audio lengths in seconds (default {FULL_SECONDS}; --tiny: {TINY_SECONDS})")
    ap.add_argument("--pitch-tracker", default="auto", choices=["auto", "praat", "pyin"],
                    help="f0 tracker (auto: Praat when praat-parselmouth is installed, else pYIN)")
    _upstream.add_argument(ap, "ICS-A2M sampling")
    ap.add_argument("--threads", type=int, default=2, help="--upstream: intra-op threads of both sides (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="--upstream: timed runs of each side (default 3)")
    args = ap.parse_args()
    if args.upstream_child:
        return _upstream.child_main(args.upstream_child, _upstream_child)
    if args.upstream:
        try:
            return _side_by_side(args)
        except _upstream.UpstreamError as exc:
            ap.error(str(exc))
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
