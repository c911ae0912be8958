"""ICS-A2M sampling: flow-matching ODE with classifier-free guidance and in-context style
(MimicTalk §ICS-A2M; upstream `cfm_wrapper.ConditionalFlowMatcherWrapper.sample` driven by
`InContextAudio2MotionModel.forward(train=False)`).

Flow matching with sigma_min = 0: x_t = (1 - t) x0 + t x1, so integrating the predicted velocity
from x0 = temperature * N(0, I) at t = 0 to t = 1 gives the motion x1. Each evaluation is a CFG
pair: v = v_null + s * (v_cond - v_null), where the null branch replaces the whole reference
motion by `null_cond`; with s == 1 only the conditional branch runs.

Long audio runs in overlapping windows so memory is flat in the audio length. Every window is
sampled with the style prompt AND the previous window's last frames as known in-context motion
(the model is trained for infilling), and its first re-predicted frames are cross-faded into the
previous window's output. Audio of up to `window_frames` motion frames (40 s by default) is
sampled in one window, exactly as upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ..errors import InputError
from ..utils import ProgressFn, check_shape, logger
from .features import AudioFeatures
from .network import InContextAudio2MotionModel
from .ode import STEPPERS, integrate
from .prompt import StylePrompt

DEFAULT_STEPS = 20  # upstream --denoising_steps: points of linspace(0, 1, N), i.e. N - 1 steps
DEFAULT_CFG_SCALE = 1.5  # upstream --cfg_scale
DEFAULT_TEMPERATURE = 0.3  # upstream CLI --temperature (the Gradio demo uses 0.2)
WINDOW_FRAMES = 1000  # 40 s of 25 fps motion per window
OVERLAP_FRAMES = 50  # frames shared by consecutive windows (2 s) ...
CROSSFADE_FRAMES = 10  # ... of which the last 10 are re-predicted and cross-faded, the rest fixed


@dataclass(frozen=True)
class Window:
    """Driving frames [start, stop); the first `context` are the previous window's output shown
    as known motion, the next `fade` are re-predicted and blended into it."""

    start: int
    stop: int
    context: int = 0
    fade: int = 0


def plan_windows(total: int, window: int, overlap: int, crossfade: int) -> list[Window]:
    """Split `total` motion frames into windows of at most `window` frames overlapping by
    `overlap` (of which `crossfade` are blended)."""
    if not 0 <= crossfade <= overlap or (total > window and overlap >= window):
        raise InputError(
            f"window settings need 0 <= crossfade ({crossfade}) <= overlap ({overlap}) < "
            f"window ({window}) frames"
        )
    windows, start = [Window(0, min(window, total))], window - overlap
    while windows[-1].stop < total:
        windows.append(Window(start, min(start + window, total), overlap - crossfade, crossfade))
        start += window - overlap
    return windows


def _check_args(model, features, style, steps, temperature, cfg_scale, method):
    cfg = model.cfg
    if model.training:
        raise ValueError("ICS-A2M model is in training mode; call model.eval() before sampling")
    if not isinstance(steps, int) or steps < 2:
        raise InputError(f"steps must be an integer >= 2 (grid points of linspace(0, 1, steps)), got {steps!r}")
    if method not in STEPPERS:
        raise InputError(f"unknown ODE method '{method}'; choose one of {sorted(STEPPERS)}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature}")
    if not math.isfinite(cfg_scale):
        raise InputError(f"cfg_scale must be finite, got {cfg_scale}")
    if features.hubert.shape[1] != cfg.audio_dim:
        raise InputError(
            f"audio features are {features.hubert.shape[1]}-d but the motion model expects "
            f"{cfg.audio_dim}-d HuBERT features; extract them with facebook/hubert-large-ls960-ft."
        )
    if features.num_motion_frames < 1:
        raise InputError("audio features hold no motion frame; the audio is too short.")
    if style is not None and (
        style.hubert.shape[1] != cfg.audio_dim or style.motion.shape[1] != cfg.motion_dim
    ):
        raise InputError(
            f"style prompt has {style.motion.shape[1]}-d motion and {style.hubert.shape[1]}-d "
            f"audio; the model expects {cfg.motion_dim}-d motion and {cfg.audio_dim}-d audio."
        )


@torch.inference_mode()
def sample_motion(
    model: InContextAudio2MotionModel,
    features: AudioFeatures,
    style: Optional[StylePrompt] = None,
    *,
    steps: int = DEFAULT_STEPS,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    temperature: float = DEFAULT_TEMPERATURE,
    method: str = "midpoint",
    generator: Optional[torch.Generator] = None,
    noise: Optional[torch.Tensor] = None,
    mouth_amp: float = 1.0,
    blink: Optional[torch.Tensor] = None,
    window_frames: int = WINDOW_FRAMES,
    overlap_frames: int = OVERLAP_FRAMES,
    crossfade_frames: int = CROSSFADE_FRAMES,
    on_step: Optional[ProgressFn] = None,
) -> torch.Tensor:
    """Sample 25 fps expression motion [T_m, 64] (fp32, CPU) for `features` (T_m = T_a / 2).

    style: a `StylePrompt` (clip or single expression) or None (no prompt: CFG has no effect
    unless the checkpoint's null_cond is non-zero). steps: grid points of linspace(0, 1, steps)
    (upstream default 20 = 19 steps). method: 'euler', 'midpoint' (upstream) or 'rk4' (3/8 rule).
    noise: standard-normal initial state [T_m, 64]; drawn from `generator` when None (the ODE
    starts at temperature * noise). mouth_amp / blink [T_a] (0/1 at 50 Hz) feed the auxiliary
    embeddings when the checkpoint has them. on_step(done, total) runs after every ODE step of
    every window and may raise to cancel."""
    _check_args(model, features, style, steps, temperature, cfg_scale, method)
    cfg = model.cfg
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    t_m, t_a = features.num_motion_frames, features.num_frames
    if noise is None:
        gen_device = generator.device if generator is not None else torch.device("cpu")
        noise = torch.randn(t_m, cfg.motion_dim, generator=generator, device=gen_device)
    check_shape(noise, (t_m, cfg.motion_dim), "noise")
    if blink is not None:
        check_shape(blink, (t_a,), "blink")
        if not ((blink == 0) | (blink == 1)).all():
            raise InputError("blink must hold 0 (eyes open) or 1 (blink) per 50 Hz audio frame")
    if not cfg.use_aux_features and (blink is not None or mouth_amp != 1.0):
        logger.warning("this ICS-A2M checkpoint has no auxiliary features: mouth_amp/blink ignored")

    windows = plan_windows(t_m, window_frames, overlap_frames, crossfade_frames)
    run = _Run(
        model, features, style, noise, blink, float(mouth_amp), float(temperature),
        float(cfg_scale), torch.linspace(0, 1, steps, device=device), method, device, dtype,
        on_step, len(windows) * (steps - 1),
    )
    out = torch.zeros(t_m, cfg.motion_dim)
    for k, w in enumerate(windows):
        _place(out, run.window(w, out, step_offset=k * (steps - 1)).cpu(), w)
    return out


def _place(out: torch.Tensor, new: torch.Tensor, w: Window) -> None:
    """Write a window's frames [w.start + w.context, w.stop) into `out`, its first `w.fade`
    cross-faded into what `out` already holds there (linear ramp towards the new window)."""
    a = w.start + w.context
    if w.fade:
        weight = torch.arange(1, w.fade + 1, dtype=torch.float32).div_(w.fade + 1)[:, None]
        new[: w.fade] = out[a: a + w.fade] * (1 - weight) + new[: w.fade] * weight
    out[a: w.stop] = new


@torch.inference_mode()
def continue_motion(
    model: InContextAudio2MotionModel,
    features: AudioFeatures,
    style: Optional[StylePrompt],
    context: torch.Tensor,
    *,
    fade: int = 0,
    steps: int = DEFAULT_STEPS,
    cfg_scale: float = DEFAULT_CFG_SCALE,
    temperature: float = DEFAULT_TEMPERATURE,
    method: str = "midpoint",
    generator: Optional[torch.Generator] = None,
    mouth_amp: float = 1.0,
) -> torch.Tensor:
    """One window of :func:`sample_motion` for incremental (streaming) use: `features` cover
    T_m motion frames of which the first C = len(`context`) already have motion `context`
    [C, D]. The first C - `fade` frames are shown to the model as known in-context motion (so
    the window continues them); the last `fade` context frames are re-predicted and cross-faded
    into `context` exactly as :func:`sample_motion` blends its window seams. Returns motion
    [T_m - C + fade, D] (fp32, CPU) for frames [C - fade, T_m)."""
    _check_args(model, features, style, steps, temperature, cfg_scale, method)
    cfg, t_m = model.cfg, features.num_motion_frames
    check_shape(context, (None, cfg.motion_dim), "context motion")
    c = context.shape[0]
    if not 0 <= fade <= c < t_m:
        raise InputError(f"continue_motion needs 0 <= fade ({fade}) <= context ({c}) < motion frames ({t_m})")
    param = next(model.parameters())
    gen_device = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(t_m, cfg.motion_dim, generator=generator, device=gen_device)
    run = _Run(
        model, features, style, noise, None, float(mouth_amp), float(temperature), float(cfg_scale),
        torch.linspace(0, 1, steps, device=param.device), method, param.device, param.dtype, None, steps - 1,
    )
    out = torch.zeros(t_m, cfg.motion_dim)
    out[:c] = context.detach().float().cpu()
    w = Window(0, t_m, c - fade, fade)
    _place(out, run.window(w, out, step_offset=0).cpu(), w)
    return out[c - fade:]


@dataclass
class _Run:
    """Everything one sampling call shares between its windows."""

    model: InContextAudio2MotionModel
    features: AudioFeatures
    style: Optional[StylePrompt]
    noise: torch.Tensor  # [T_m, D] standard normal
    blink: Optional[torch.Tensor]  # [T_a] or None
    mouth_amp: float
    temperature: float
    cfg_scale: float
    grid: torch.Tensor  # linspace(0, 1, steps) on the device
    method: str
    device: torch.device
    dtype: torch.dtype
    on_step: Optional[ProgressFn]
    total_steps: int

    def audio_condition(self, w: Window, n: int) -> torch.Tensor:
        """Audio embedding [1, n, 64] of [style audio | driving audio of the window]."""
        s, e = 2 * w.start, 2 * w.stop  # 25 fps frames -> 50 Hz audio frames
        hubert, f0 = self.features.hubert[s:e], self.features.f0[s:e]
        blink = torch.zeros(e - s, dtype=torch.long) if self.blink is None else self.blink[s:e].long()
        if self.style is not None:
            hubert = torch.cat([self.style.hubert, hubert])
            f0 = torch.cat([self.style.f0, f0])
            blink = torch.cat([torch.zeros(len(self.style.f0), dtype=torch.long), blink])  # prompt: 0
        dev, dt = self.device, self.dtype
        cond_audio = self.model.encode_audio(
            hubert[None].to(dev, dt), f0[None].to(dev), blink[None].to(dev),
            torch.full((1,), self.mouth_amp, device=dev, dtype=dt),
        )
        return self.model.velocity_net.embed_audio(cond_audio, n)  # [1, 2n, A] -> [1, n, 64]

    def window(self, w: Window, out: torch.Tensor, step_offset: int) -> torch.Tensor:
        """Integrate one window; return its frames [w.start + w.context, w.stop), [*, D]."""
        d = self.model.cfg.motion_dim
        prefix = self.style.num_frames if self.style is not None else 0
        known = prefix + w.context  # frames shown as reference motion
        n = prefix + w.stop - w.start  # sequence length of this window (25 fps)
        audio_emb = self.audio_condition(w, n)

        # reference motion: [style motion | previous window's tail | zeros], mask True = predict
        cond = torch.zeros(n, d)
        if self.style is not None:
            cond[:prefix] = self.style.motion
        cond[prefix:known] = out[w.start: w.start + w.context]
        cond_mask = torch.arange(n) >= known
        y0 = torch.zeros(1, n, d, device=self.device)  # fp32 ODE state; known frames unused
        y0[0, known:] = self.noise[w.start + w.context: w.stop].to(self.device) * self.temperature

        guided = self.cfg_scale != 1.0
        batch = 2 if guided else 1  # row 0: conditional, row 1: null (reference -> null_cond)
        audio_emb = audio_emb.expand(batch, -1, -1)
        cond = cond.to(self.device, self.dtype)[None].expand(batch, -1, -1)
        cond_mask = cond_mask.to(self.device)[None].expand(batch, -1)
        drop = torch.tensor([False, True][:batch], device=self.device)

        def velocity(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            x = y.to(self.dtype).expand(batch, -1, -1)  # the network may run in bf16
            v = self.model.velocity(x, t.expand(batch), audio_emb, cond, cond_mask, drop).float()
            if not guided:
                return v
            v_cond, v_null = v[:1], v[1:]
            return v_null + (v_cond - v_null) * self.cfg_scale

        y1 = integrate(velocity, y0, self.grid, self.method, self.on_step, step_offset, self.total_steps)
        return y1[0, known:]
