"""StyleGAN2 layers in the EG3D convention, in plain PyTorch (no custom CUDA ops).

The super-resolution network of EG3D / Real3D-Portrait / MimicTalk (``superresolution.block0``,
``block1``, ``head_torso_block``), the SegFormer ``prenet`` and the tri-plane ``decoder`` are
built from these layers. Parameter and buffer names equal the upstream checkpoint keys
(``weight``, ``bias``, ``affine.*``, ``noise_const``, ``noise_strength``, ``resample_filter``)
so official state dicts load strictly.

Numerics (StyleGAN2, Karras et al. 2020; EG3D, Chan et al. 2022):

* **Equalized learning rate.** Raw N(0, 1) weights are stored; a gain is applied at run time:
  ``lr_multiplier / sqrt(fan_in)`` for fully connected layers, ``1 / sqrt(in * k * k)`` for
  convolutions. Modulated convolutions are demodulated instead, so their gain cancels.
* **bias_act.** ``act(x + b) * gain``, then clamp to ``+-clamp``; leaky ReLU has slope 0.2 and
  default gain sqrt(2).
* **Resampling.** The FIR filter ``[1, 3, 3, 1]`` (outer product, normalised to sum 1) is a
  4x4 buffer. ``upfirdn2d`` = zero-insertion upsampling, pad or crop, FIR (convolution, i.e.
  the filter is flipped), keep every ``down``-th pixel. The x2 modulated convolution runs as a
  stride-2 transposed convolution followed by the FIR filter with gain ``up**2``.
* **LoRA hook.** Each layer's ``forward`` takes a keyword-only ``delta_weight`` tensor of the
  weight's shape, combined as upstream's inline LoRA does (MimicTalk ``networks_stylegan2``):
  added *after* the equalized-lr gain in :class:`FullyConnectedLayer` and :class:`Conv2dLayer`
  (``w_eff = W * gain + dW``) and to the *raw* weight, before modulation / demodulation, in
  :class:`SynthesisLayer` and :class:`ToRGBLayer`. A LoRA'd layer computes ``dW`` (e.g.
  ``(B @ A).view(W.shape) / r``) and passes it here, so no weight is ever copied.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

RESAMPLE_FILTER_TAPS = (1, 3, 3, 1)
"""Binomial low-pass filter used by every StyleGAN2 resampling step (upstream default)."""

LRELU_SLOPE = 0.2
"""Negative slope of StyleGAN's 'lrelu' activation (``bias_act`` def_alpha)."""

ACTIVATION_GAINS = {"linear": 1.0, "relu": math.sqrt(2.0), "lrelu": math.sqrt(2.0)}
"""Default post-activation gain of each supported ``bias_act`` activation (upstream def_gain)."""

DEMOD_EPS = 1e-8
"""Epsilon inside the demodulation rsqrt (StyleGAN2 eq. 3)."""

NOISE_MODES = ("none", "const", "random")


# --------------------------------------------------------------------------------------------
# Functional ops: bias_act, FIR filter, upfirdn2d, resampling convolution, modulated conv.
# --------------------------------------------------------------------------------------------


def make_resample_filter(taps: Sequence[float] = RESAMPLE_FILTER_TAPS) -> torch.Tensor:
    """2-D FIR filter ``[len(taps), len(taps)]``: outer product of ``taps``, normalised to sum 1.

    Upstream stores short filters (< 8 taps) in this non-separable 2-D form, which is what the
    ``resample_filter (4, 4)`` checkpoint buffers hold.
    """
    # Built from Python floats: tensor maths here would, on the meta device, import torch._dynamo
    # (seconds) just to build a model for a shape check.
    total = sum(taps) ** 2
    return torch.tensor([[a * b / total for b in taps] for a in taps], dtype=torch.float32)


def bias_act(
    x: torch.Tensor,
    b: Optional[torch.Tensor] = None,
    act: str = "linear",
    gain: Optional[float] = None,
    clamp: Optional[float] = None,
) -> torch.Tensor:
    """``clamp(act(x + b) * gain)``, ``b`` broadcast along dim 1 (upstream ``bias_act`` ref path).

    ``gain=None`` uses the activation's default gain (sqrt(2) for relu/lrelu, 1 for linear).
    """
    if act not in ACTIVATION_GAINS:
        raise ValueError(f"bias_act: unsupported activation {act!r}; use one of {list(ACTIVATION_GAINS)}")
    if b is not None:
        x = x + b.reshape([1, -1] + [1] * (x.dim() - 2))
    if act == "lrelu":
        x = F.leaky_relu(x, LRELU_SLOPE)
    elif act == "relu":
        x = F.relu(x)
    gain = ACTIVATION_GAINS[act] if gain is None else float(gain)
    if gain != 1:
        x = x * gain
    if clamp is not None and clamp >= 0:
        x = x.clamp(-clamp, clamp)
    return x


def upfirdn2d(
    x: torch.Tensor,
    f: torch.Tensor,
    up: int = 1,
    down: int = 1,
    padding: Sequence[int] = (0, 0, 0, 0),
    gain: float = 1.0,
    flip_filter: bool = False,
) -> torch.Tensor:
    """Upsample (zero insertion), pad/crop, FIR-filter and downsample ``x [B, C, H, W]``.

    ``padding = (x_before, x_after, y_before, y_after)`` in upsampled pixels, negative values
    crop. ``f`` is a 2-D filter; it is scaled by ``gain`` and, unless ``flip_filter``, flipped
    (true convolution), exactly as the upstream reference implementation.
    """
    batch, channels, height, width = x.shape
    px0, px1, py0, py1 = padding
    if up > 1:
        # [B, C, H, W] -> [B, C, H, 1, W, 1] -> zero-pad the unit dims -> [B, C, H*up, W*up]
        x = x.reshape(batch, channels, height, 1, width, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(batch, channels, height * up, width * up)
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0) : x.shape[2] - max(-py1, 0), max(-px0, 0) : x.shape[3] - max(-px1, 0)]
    f = (f * gain).to(x.dtype)
    if not flip_filter:
        f = f.flip([0, 1])
    x = F.conv2d(x, f[None, None].expand(channels, 1, *f.shape), groups=channels)  # depthwise FIR
    return x[:, :, ::down, ::down]


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Upsample ``x`` by ``up`` with the FIR filter ``f``; output size is exactly ``H * up``."""
    taps = f.shape[-1]
    pad = [(taps + up - 1) // 2, (taps - up) // 2] * 2
    return upfirdn2d(x, f, up=up, padding=pad, gain=up * up)


def _padding4(padding: int | Sequence[int]) -> list[int]:
    if isinstance(padding, int):
        return [padding] * 4
    if len(padding) == 2:  # (x, y)
        return [padding[0], padding[0], padding[1], padding[1]]
    return list(padding)


def conv2d_resample(
    x: torch.Tensor,
    w: torch.Tensor,
    f: Optional[torch.Tensor] = None,
    up: int = 1,
    down: int = 1,
    padding: int | Sequence[int] = 0,
    groups: int = 1,
    flip_weight: bool = True,
) -> torch.Tensor:
    """2-D convolution ``w [O, I/groups, kh, kw]`` with optional FIR up/down-sampling.

    ``padding`` is with respect to the upsampled image and applied once. ``flip_weight=True``
    is correlation (``F.conv2d``), ``False`` true convolution. The operation order per case
    follows the upstream fast paths so results agree to rounding:
    1x1 + up: conv then upsample; 1x1 + down: downsample then conv; down only: FIR then strided
    conv; up: stride-``up`` transposed conv then FIR (gain ``up**2``); neither: plain conv.
    """
    out_ch, in_per_group, kh, kw = w.shape
    fh, fw = (f.shape[0], f.shape[1]) if f is not None else (1, 1)
    px0, px1, py0, py1 = _padding4(padding)
    if up > 1:  # account for the filter's support around the upsampled image
        px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
        py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
    if down > 1:
        px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
        py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
    pads = [px0, px1, py0, py1]
    spatial = kh > 1 or kw > 1
    if up == 1 and not flip_weight and spatial:
        w = w.flip([2, 3])  # true convolution = correlation with the flipped kernel

    if kh == 1 and kw == 1 and down > 1 and up == 1:
        x = upfirdn2d(x, f, down=down, padding=pads)
        return F.conv2d(x, w, groups=groups)
    if kh == 1 and kw == 1 and up > 1 and down == 1:
        x = F.conv2d(x, w, groups=groups)
        return upfirdn2d(x, f, up=up, padding=pads, gain=up * up)
    if down > 1 and up == 1:
        x = upfirdn2d(x, f, padding=pads)
        return F.conv2d(x, w, stride=down, groups=groups)
    if up > 1:
        # A transposed convolution is itself a true convolution of the zero-inserted input, so
        # the kernel is flipped only when correlation was asked for (upstream convention).
        if flip_weight and spatial:
            w = w.flip([2, 3])
        # conv_transpose2d wants [I, O/groups, kh, kw]:
        # [O, I/g, kh, kw] -> [g, O/g, I/g, kh, kw] -> [g*I/g, O/g, kh, kw]
        w = w.reshape(groups, out_ch // groups, in_per_group, kh, kw).transpose(1, 2)
        w = w.reshape(groups * in_per_group, out_ch // groups, kh, kw)
        px0, px1, py0, py1 = px0 - (kw - 1), px1 - (kw - up), py0 - (kh - 1), py1 - (kh - up)
        pxt, pyt = max(min(-px0, -px1), 0), max(min(-py0, -py1), 0)
        x = _conv_transpose2d(x, w, stride=up, padding=[pyt, pxt], groups=groups)
        x = upfirdn2d(x, f, padding=[px0 + pxt, px1 + pxt, py0 + pyt, py1 + pyt], gain=up * up)
        if down > 1:
            x = upfirdn2d(x, f, down=down)
        return x
    if px0 == px1 and py0 == py1 and px0 >= 0 and py0 >= 0:
        return F.conv2d(x, w, padding=[py0, px0], groups=groups)
    x = upfirdn2d(x, torch.ones(1, 1, device=x.device), padding=pads)  # generic padding
    return F.conv2d(x, w, groups=groups)


def _conv_transpose2d(x: torch.Tensor, w: torch.Tensor, **kw) -> torch.Tensor:
    """``F.conv_transpose2d`` with the same values, faster on the CPU. oneDNN computes it in
    channels-last (NHWC) layout there, and PyTorch converts a contiguous (NCHW) input and the
    result with its generic strided copy, which took as long as the convolution itself (0.4 s
    for the 128 x 513² output of ``block1``). The conversions here are PyTorch's blocked 2-D
    transposes instead (one per image, ~4.5x faster); the convolution is the same call on the
    same values, so the output is bit-identical. Grouped convolutions (the fused modulated conv
    of a batch > 1) take another oneDNN path whose values depend on the layout: left as they are."""
    if (x.device.type != "cpu" or x.dim() != 4 or kw.get("groups", 1) != 1
            or x.is_contiguous(memory_format=torch.channels_last)):
        return F.conv_transpose2d(x, w, **kw)
    return _transpose_layout(F.conv_transpose2d(_transpose_layout(x.contiguous(), torch.channels_last), w, **kw))


def _transpose_layout(x: torch.Tensor, layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """``x`` [N, C, H, W] (contiguous, or channels-last when ``layout`` is contiguous) copied
    into ``layout`` through 2-D [C, H*W] <-> [H*W, C] transposes."""
    if x.is_contiguous(memory_format=layout):
        return x
    n, c, h, w = x.shape
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=layout)
    for i in range(n):
        if layout == torch.channels_last:
            out[i].permute(1, 2, 0).view(h * w, c).copy_(x[i].view(c, h * w).t())
        else:
            out[i].view(c, h * w).copy_(x[i].permute(1, 2, 0).reshape(h * w, c).t())
    return out


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    noise: Optional[torch.Tensor] = None,
    up: int = 1,
    padding: int = 0,
    resample_filter: Optional[torch.Tensor] = None,
    demodulate: bool = True,
    flip_weight: bool = True,
    fused_modconv: bool = True,
) -> torch.Tensor:
    """StyleGAN2 modulated convolution (Karras et al. 2020, eqs. 1-3).

    x: [B, I, H, W]; weight: [O, I, k, k]; styles: [B, I] or [1, I] (shared by the whole batch).
    ``fused_modconv`` builds per-sample weights and runs one grouped convolution (upstream's
    inference path); otherwise the activations are scaled before and after a shared conv
    (upstream's training path). Shared styles (batch 1) skip the grouped convolution: the
    modulated weight is the same for every sample, so a plain convolution over the batch is
    identical and much faster. ``noise`` is added after demodulation, before the bias.
    """
    batch = x.shape[0]
    out_ch, in_ch, kh, kw = weight.shape
    if styles.shape[-1] != in_ch or styles.shape[0] not in (1, batch):
        raise ValueError(f"modulated_conv2d: styles {list(styles.shape)} do not fit x {list(x.shape)} / weight {list(weight.shape)}")
    if x.dtype == torch.float16 and demodulate:
        # Upstream pre-normalises to avoid fp16 overflow; demodulation cancels the scale.
        weight = weight * (1 / math.sqrt(in_ch * kh * kw) / weight.norm(float("inf"), dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.norm(float("inf"), dim=1, keepdim=True)
    nb = styles.shape[0]  # 1 when styles are shared
    w = weight.unsqueeze(0) * styles.reshape(nb, 1, in_ch, 1, 1)  # [N, O, I, k, k]
    dcoefs = (w.square().sum(dim=[2, 3, 4]) + DEMOD_EPS).rsqrt() if demodulate else None  # [N, O]
    conv = dict(f=resample_filter, up=up, padding=padding, flip_weight=flip_weight)

    if not fused_modconv:
        x = x * styles.to(x.dtype).reshape(nb, in_ch, 1, 1)
        x = conv2d_resample(x, weight.to(x.dtype), **conv)
        if dcoefs is not None:
            x = x * dcoefs.to(x.dtype).reshape(nb, out_ch, 1, 1)
        return x + noise.to(x.dtype) if noise is not None else x

    if dcoefs is not None:
        w = w * dcoefs.reshape(nb, out_ch, 1, 1, 1)
    if nb == 1:
        x = conv2d_resample(x, w[0].to(x.dtype), **conv)
    else:
        # [B, I, H, W] -> [1, B*I, H, W]; one group per sample with weights [B*O, I, k, k]
        x = x.reshape(1, batch * in_ch, *x.shape[2:])
        x = conv2d_resample(x, w.reshape(batch * out_ch, in_ch, kh, kw).to(x.dtype), groups=batch, **conv)
        x = x.reshape(batch, out_ch, *x.shape[2:])  # [1, B*O, H', W'] -> [B, O, H', W']
    return x + noise.to(x.dtype) if noise is not None else x


def _check_delta(delta: Optional[torch.Tensor], weight: torch.Tensor, layer: str) -> None:
    if delta is not None and delta.shape != weight.shape:
        raise ValueError(f"{layer}: delta_weight must have the weight's shape {list(weight.shape)}, got {list(delta.shape)}")


def _check_input(layer: nn.Module, x: torch.Tensor) -> None:
    """``x`` must be ``[B, in_channels, R/up, R/up]`` for a layer or block of output size R."""
    in_res = layer.resolution // layer.up
    if x.shape[1:] != (layer.in_channels, in_res, in_res):
        raise ValueError(f"{type(layer).__name__}: expected x [B, {layer.in_channels}, {in_res}, {in_res}], got {list(x.shape)}")


# --------------------------------------------------------------------------------------------
# Layers.
# --------------------------------------------------------------------------------------------


class FullyConnectedLayer(nn.Module):
    """Equalized-lr linear layer: ``act(x @ (W * gain + dW).T + b * lr_multiplier)``.

    weight: [out, in] (raw, N(0, 1) / lr_multiplier at init); bias: [out];
    gain = lr_multiplier / sqrt(in). ``delta_weight`` (LoRA) is added after the gain.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str = "linear",
        lr_multiplier: float = 1.0,
        bias_init: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        weight = torch.randn(out_features, in_features)
        self.weight = nn.Parameter(weight / lr_multiplier if lr_multiplier != 1 else weight)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def effective_weight(self, delta_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``W * gain (+ dW)``: the matrix the layer multiplies with."""
        _check_delta(delta_weight, self.weight, "FullyConnectedLayer")
        w = self.weight * self.weight_gain
        return w + delta_weight if delta_weight is not None else w

    def forward(self, x: torch.Tensor, *, delta_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        w = self.effective_weight(delta_weight).to(x.dtype)
        b = self.bias
        if b is not None:
            b = b.to(x.dtype)
            if self.bias_gain != 1:
                b = b * self.bias_gain
        if self.activation == "linear":
            return F.linear(x, w, b)
        # bias_act adds the bias along dim 1, as upstream (x is [B, features] here)
        return bias_act(x.matmul(w.t()), b, act=self.activation)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class _ConvBase(nn.Module):
    """What Conv2dLayer and SynthesisLayer share: the raw kernel [O, I, k, k], the FIR filter
    buffer, 'same' padding and the bias + activation + gain + clamp epilogue."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, activation: str, up: int,
        resample_filter: Sequence[float], conv_clamp: Optional[float],
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.activation = activation
        self.up = up
        self.conv_clamp = conv_clamp
        self.register_buffer("resample_filter", make_resample_filter(resample_filter))
        self.padding = kernel_size // 2
        self.act_gain = ACTIVATION_GAINS[activation]
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))

    def _activate(self, x: torch.Tensor, bias: Optional[torch.Tensor], gain: float) -> torch.Tensor:
        """``bias_act`` with the layer's activation; ``gain`` scales both the gain and the clamp."""
        clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
        b = bias.to(x.dtype) if bias is not None else None
        return bias_act(x, b, act=self.activation, gain=self.act_gain * gain, clamp=clamp)


class Conv2dLayer(_ConvBase):
    """Equalized-lr convolution with optional FIR up/down-sampling, bias, activation, clamp.

    weight: [out, in, k, k]; bias: [out]; buffer resample_filter: [4, 4].
    gain = 1 / sqrt(in * k * k); ``delta_weight`` (LoRA) is added after the gain.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        bias: bool = True,
        activation: str = "linear",
        up: int = 1,
        down: int = 1,
        resample_filter: Sequence[float] = RESAMPLE_FILTER_TAPS,
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, activation, up, resample_filter, conv_clamp)
        self.down = down
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def effective_weight(self, delta_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``W * gain (+ dW)``: the kernel the layer convolves with."""
        _check_delta(delta_weight, self.weight, "Conv2dLayer")
        w = self.weight * self.weight_gain
        return w + delta_weight if delta_weight is not None else w

    def forward(
        self, x: torch.Tensor, gain: float = 1.0, *, delta_weight: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        w = self.effective_weight(delta_weight).to(x.dtype)
        x = conv2d_resample(
            x, w, f=self.resample_filter, up=self.up, down=self.down, padding=self.padding,
            flip_weight=(self.up == 1),  # upstream: correlation unless upsampling
        )
        return self._activate(x, self.bias, gain)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, activation={self.activation}, "
            f"up={self.up}, down={self.down}"
        )


class SynthesisLayer(_ConvBase):
    """StyleGAN2 modulated 3x3 convolution with optional x2 upsampling, noise, bias, lrelu.

    x: [B, I, R/up, R/up], w: [B or 1, w_dim] -> [B, O, R, R].
    Parameters: weight [O, I, k, k] (raw; demodulation replaces the gain), bias [O],
    noise_strength [] ; buffers resample_filter [4, 4], noise_const [R, R];
    ``affine`` maps w to the styles [B, I] (bias init 1).
    ``delta_weight`` (LoRA) is added to the raw weight before modulation and demodulation;
    LoRA on the styles is applied by wrapping ``affine`` itself.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        kernel_size: int = 3,
        up: int = 1,
        use_noise: bool = True,
        activation: str = "lrelu",
        resample_filter: Sequence[float] = RESAMPLE_FILTER_TAPS,
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, activation, up, resample_filter, conv_clamp)
        self.w_dim = w_dim
        self.resolution = resolution
        self.use_noise = use_noise
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        if use_noise:
            self.register_buffer("noise_const", torch.randn(resolution, resolution))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor,
        noise_mode: str = "none",
        fused_modconv: bool = True,
        gain: float = 1.0,
        *,
        delta_weight: Optional[torch.Tensor] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """``noise_mode``: 'none' (what upstream inference and adaptation use), 'const' (the
        stored ``noise_const``) or 'random' (fresh N(0, 1) from ``generator``), each scaled by
        ``noise_strength``."""
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"SynthesisLayer: noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        _check_input(self, x)
        _check_delta(delta_weight, self.weight, "SynthesisLayer")
        styles = self.affine(w)  # [B, I]
        noise = None
        if self.use_noise and noise_mode == "random":
            shape = (x.shape[0], 1, self.resolution, self.resolution)
            noise = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype) * self.noise_strength
        elif self.use_noise and noise_mode == "const":
            noise = self.noise_const * self.noise_strength
        weight = self.weight if delta_weight is None else self.weight + delta_weight
        x = modulated_conv2d(
            x, weight, styles, noise=noise, up=self.up, padding=self.padding,
            resample_filter=self.resample_filter, flip_weight=(self.up == 1), fused_modconv=fused_modconv,
        )
        return self._activate(x, self.bias, gain)

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}, "
            f"resolution={self.resolution}, up={self.up}, activation={self.activation}"
        )


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, without demodulation.

    x: [B, I, R, R], w: [B or 1, w_dim] -> [B, img_channels, R, R].
    styles = affine(w) / sqrt(I * k * k); ``delta_weight`` (LoRA) is added to the raw weight
    (the style scaling still applies to it).
    """

    def __init__(
        self, in_channels: int, out_channels: int, w_dim: int, kernel_size: int = 1, conv_clamp: Optional[float] = None
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.w_dim = w_dim
        self.conv_clamp = conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)

    def forward(
        self, x: torch.Tensor, w: torch.Tensor, fused_modconv: bool = True, *, delta_weight: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        _check_delta(delta_weight, self.weight, "ToRGBLayer")
        styles = self.affine(w) * self.weight_gain  # [B, I]
        weight = self.weight if delta_weight is None else self.weight + delta_weight
        x = modulated_conv2d(x, weight, styles, demodulate=False, fused_modconv=fused_modconv)
        return bias_act(x, self.bias.to(x.dtype), clamp=self.conv_clamp)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}, w_dim={self.w_dim}"


# --------------------------------------------------------------------------------------------
# Blocks.
# --------------------------------------------------------------------------------------------


class SynthesisBlock(nn.Module):
    """StyleGAN2 synthesis block (EG3D super-resolution form): conv0 (x2 up) -> conv1 -> torgb.

    x: [B, I, R/2, R/2], img: [B, C_img, R/2, R/2] or None, ws: [B or 1, 3, w_dim]
    -> (x [B, O, R, R], img [B, C_img, R, R]). With the 'skip' architecture the incoming image
    is FIR-upsampled and the block's ToRGB output is added to it. The first block of a full
    StyleGAN generator (learned constant input) is not needed here and not supported.
    """

    up = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        w_dim: int,
        resolution: int,
        img_channels: int = 3,
        is_last: bool = False,
        architecture: str = "skip",
        resample_filter: Sequence[float] = RESAMPLE_FILTER_TAPS,
        conv_clamp: Optional[float] = None,
    ) -> None:
        super().__init__()
        if architecture not in ("orig", "skip", "resnet"):
            raise ValueError(f"SynthesisBlock: architecture must be 'orig', 'skip' or 'resnet', got {architecture!r}")
        if in_channels <= 0:
            raise ValueError(f"SynthesisBlock: in_channels must be positive (no constant-input block), got {in_channels}")
        self.in_channels = in_channels
        self.w_dim = w_dim
        self.resolution = resolution
        self.img_channels = img_channels
        self.is_last = is_last
        self.architecture = architecture
        self.register_buffer("resample_filter", make_resample_filter(resample_filter))
        self.conv0 = SynthesisLayer(
            in_channels, out_channels, w_dim, resolution, up=self.up, resample_filter=resample_filter, conv_clamp=conv_clamp
        )
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, resolution, conv_clamp=conv_clamp)
        self.num_conv = 2
        self.num_torgb = 0
        if is_last or architecture == "skip":
            self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
            self.num_torgb = 1
        if architecture == "resnet":
            self.skip = Conv2dLayer(
                in_channels, out_channels, kernel_size=1, bias=False, up=self.up, resample_filter=resample_filter
            )

    def forward(
        self,
        x: torch.Tensor,
        img: Optional[torch.Tensor],
        ws: torch.Tensor,
        noise_mode: str = "none",
        fused_modconv: Optional[bool] = None,
        generator: Optional[torch.Generator] = None,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``fused_modconv=None`` means fused in eval mode and unfused in training (upstream's
        'inference_only' default); both give the same result up to rounding."""
        n_ws = self.num_conv + self.num_torgb
        if ws.dim() != 3 or ws.shape[1] != n_ws or ws.shape[2] != self.w_dim:
            raise ValueError(f"{type(self).__name__}: expected ws [B, {n_ws}, {self.w_dim}], got {list(ws.shape)}")
        _check_input(self, x)
        if fused_modconv is None:
            fused_modconv = not self.training
        w0, w1, *w_rgb = ws.unbind(dim=1)
        layer_kw = dict(noise_mode=noise_mode, fused_modconv=fused_modconv, generator=generator)
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x, w0, **layer_kw)
            x = y + self.conv1(x, w1, gain=math.sqrt(0.5), **layer_kw)
        else:
            x = self.conv1(self.conv0(x, w0, **layer_kw), w1, **layer_kw)
        if img is not None and self.up > 1:
            img = upsample2d(img, self.resample_filter, up=self.up)
        if self.num_torgb:
            y = self.torgb(x, w_rgb[0], fused_modconv=fused_modconv).float()
            img = img + y if img is not None else y
        return x, img

    def extra_repr(self) -> str:
        return f"resolution={self.resolution}, architecture={self.architecture}"


class SynthesisBlockNoUp(SynthesisBlock):
    """:class:`SynthesisBlock` without upsampling (EG3D ``SynthesisBlockNoUp``): conv0 keeps
    the resolution and the incoming image is not resampled.

    x: [B, I, R, R], img: [B, C_img, R, R] or None -> (x [B, O, R, R], img [B, C_img, R, R]).
    """

    up = 1
