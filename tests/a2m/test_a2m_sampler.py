"""Flow-matching sampler: integrators, CFG, seeding, style context, progress, long-audio windows."""

import math

import pytest
import torch

from mimictalk_lib.a2m import AudioFeatures, StylePrompt, integrate, plan_windows, sample_motion
from mimictalk_lib.errors import InputError
from tests.fixtures.tiny_a2m import synthetic_features, tiny_a2m


@pytest.fixture(scope="module")
def model():
    return tiny_a2m(aux=True, seed=0)


@pytest.fixture(scope="module")
def feats():
    return synthetic_features(96, seed=1)  # 96 audio frames -> 48 motion frames


@pytest.fixture(scope="module")
def style(feats):
    g = torch.Generator().manual_seed(5)
    return StylePrompt(torch.randn(12, 8, generator=g) * 0.3, feats.hubert[:24] * 0.7, feats.f0[:24])


def seeded(seed):
    return torch.Generator().manual_seed(seed)


# --- integrators against closed forms -----------------------------------------------------------

@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2), ("rk4", 4)])
def test_integrators_converge_at_their_order(method, order):
    """dy/dt = A y + 2t y (time-dependent linear field): y(1) = e * expm(A) y0."""
    g = seeded(0)
    a = torch.randn(6, 6, generator=g, dtype=torch.float64) * 0.5
    y0 = torch.randn(3, 6, generator=g, dtype=torch.float64)
    exact = math.e * y0 @ torch.linalg.matrix_exp(a).T

    def f(t, y):
        return y @ a.T + 2 * t * y

    errs = []
    for n in (11, 21, 41):
        grid = torch.linspace(0, 1, n, dtype=torch.float64)
        errs.append((integrate(f, y0, grid, method) - exact).abs().max().item())
    ratios = [errs[i] / errs[i + 1] for i in range(2)]
    for r in ratios:  # halving the step divides the error by ~2**order
        assert 2**order * 0.75 < r < 2**order * 1.35, (method, errs)
    assert errs[-1] / exact.abs().max() < {1: 0.1, 2: 3e-3, 4: 3e-7}[order]


def test_integrate_reports_every_step_and_can_be_cancelled():
    seen = []
    integrate(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 6), "rk4", on_step=lambda d, n: seen.append((d, n)))
    assert seen == [(i, 5) for i in range(1, 6)]

    def cancel(done, total):
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        integrate(lambda t, y: -y, torch.ones(2), torch.linspace(0, 1, 6), "midpoint", on_step=cancel)


def test_sampler_with_closed_form_velocity(model, feats, style, monkeypatch):
    """Replace the network by dy/dt = c - y (c_cond per frame position, c_null constant): the
    sampler must return e^-1 * temperature * noise + (1 - e^-1) * (c_null + s (c_cond - c_null))
    on the driving frames only (style frames dropped, frame order kept)."""
    calls = []

    def velocity(x, t, audio_emb, cond, cond_mask, drop, key_mask=None):
        calls.append(tuple(x.shape))
        pos = torch.arange(x.shape[1], dtype=x.dtype)[None, :, None]
        c = torch.where(drop.view(-1, 1, 1), torch.full_like(x, -0.5), 0.01 * pos.expand_as(x))
        return c - x

    monkeypatch.setattr(model, "velocity", velocity)
    noise = torch.randn(48, 8, generator=seeded(3))
    s, temp = 1.7, 0.4
    out = sample_motion(model, feats, style, steps=30, cfg_scale=s, temperature=temp, method="rk4", noise=noise)
    pos = torch.arange(12, 12 + 48, dtype=torch.float32)[:, None]  # driving frames follow 12 style frames
    c_eff = -0.5 + s * (0.01 * pos - -0.5)
    expected = math.exp(-1) * temp * noise + (1 - math.exp(-1)) * c_eff
    assert torch.allclose(out, expected, atol=1e-6)
    assert calls[0] == (2, 60, 8)  # one batched CFG pair over [style | driving]
    assert len(calls) == 29 * 4  # (steps - 1) rk4 steps x 4 evaluations


# --- the real tiny network ------------------------------------------------------------------------

def softened(seed=0):
    """The fixture's random q/k gammas (~1) give attention logits up to 16 * 10 cos, nearly an
    argmax: a rough field that amplifies rounding. Gammas of 0.15 give a smooth one."""
    model = tiny_a2m(aux=True, seed=seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.gamma", "k_norm.gamma")):
                p.mul_(0.15)
    return model


def test_methods_agree_as_steps_grow(feats, style):
    """euler / midpoint / rk4 converge to the same motion on the real network path."""
    smooth = softened()

    def err(method, steps):
        out = sample_motion(smooth, feats, style, steps=steps, method=method, temperature=1.0, generator=seeded(0))
        return (out - ref).abs().max().item()

    ref = sample_motion(smooth, feats, style, steps=61, method="rk4", temperature=1.0, generator=seeded(0))
    euler = [err("euler", n) for n in (6, 11, 21)]
    midpoint = [err("midpoint", n) for n in (6, 11, 21)]
    rk4 = [err("rk4", n) for n in (6, 11)]
    assert euler[0] > euler[1] > euler[2] and midpoint[0] > midpoint[1] > midpoint[2] and rk4[0] > rk4[1]
    assert midpoint[2] < euler[2] / 10 and rk4[1] < midpoint[1] / 10 and rk4[1] < 1e-3


def test_cfg_scale_one_is_the_conditional_branch(model, feats, style, monkeypatch):
    noise = torch.randn(48, 8, generator=seeded(2))
    guided = sample_motion(model, feats, style, steps=5, cfg_scale=1.0, noise=noise)

    # the conditional branch alone, integrated by hand over [style | driving]
    n, L = 60, 12
    hub = torch.cat([style.hubert, feats.hubert])[None]
    f0 = torch.cat([style.f0, feats.f0])[None]
    with torch.no_grad():
        emb = model.velocity_net.embed_audio(model.encode_audio(hub, f0), n)
        cond = torch.zeros(1, n, 8)
        cond[0, :L] = style.motion
        mask = (torch.arange(n) >= L)[None]
        y0 = torch.zeros(1, n, 8)
        y0[0, L:] = noise * 0.3
        y1 = integrate(lambda t, y: model.velocity(y, t.expand(1), emb, cond, mask, torch.tensor([False])),
                       y0, torch.linspace(0, 1, 5), "midpoint")
    assert torch.allclose(guided, y1[0, L:], atol=1e-6)

    batches = []
    real = model.velocity
    monkeypatch.setattr(model, "velocity", lambda x, *a, **k: batches.append(x.shape[0]) or real(x, *a, **k))
    sample_motion(model, feats, style, steps=3, cfg_scale=1.0, noise=noise)
    assert set(batches) == {1}  # no null branch at scale 1
    other = sample_motion(model, feats, style, steps=5, cfg_scale=2.0, noise=noise)
    assert (other - guided).abs().max() > 1e-3  # null_cond is non-zero in the fixture


def test_same_seed_same_motion(model, feats, style):
    a = sample_motion(model, feats, style, steps=4, generator=seeded(7))
    b = sample_motion(model, feats, style, steps=4, generator=seeded(7))
    c = sample_motion(model, feats, style, steps=4, generator=seeded(8))
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-3
    explicit = sample_motion(model, feats, style, steps=4, noise=torch.randn(48, 8, generator=seeded(7)))
    assert torch.equal(a, explicit)
    assert a.shape == (48, 8) and a.dtype == torch.float32


def test_style_prompt_modes(model, feats, style):
    none = sample_motion(model, feats, None, steps=4, generator=seeded(0))
    clip = sample_motion(model, feats, style, steps=4, generator=seeded(0))
    image = sample_motion(model, feats, StylePrompt.from_expression(style.motion[0], hubert_dim=32), steps=4,
                          generator=seeded(0))
    assert none.shape == clip.shape == image.shape == (48, 8)
    assert (none - clip).abs().max() > 1e-3 and (clip - image).abs().max() > 1e-3


def test_progress_counts_every_step_of_every_window(model, feats, style):
    seen = []
    sample_motion(model, feats, style, steps=4, generator=seeded(0), window_frames=20, overlap_frames=6,
                  crossfade_frames=2, on_step=lambda d, n, **kw: seen.append((d, n)))
    windows = len(plan_windows(48, 20, 6, 2))
    assert windows == 3  # [0, 20), [14, 34), [28, 48)
    assert seen == [(i, 3 * windows) for i in range(1, 3 * windows + 1)]


def test_aux_inputs_change_motion_only_with_aux_features(feats):
    aux, plain = tiny_a2m(aux=True, seed=2), tiny_a2m(aux=False, seed=2)
    blink = (torch.arange(96) % 20 < 3).long()
    for m, changes in ((aux, True), (plain, False)):
        base = sample_motion(m, feats, steps=3, generator=seeded(0))
        amp = sample_motion(m, feats, steps=3, generator=seeded(0), mouth_amp=0.4)
        blk = sample_motion(m, feats, steps=3, generator=seeded(0), blink=blink)
        assert bool((amp - base).abs().max() > 1e-4) is changes
        assert bool((blk - base).abs().max() > 1e-4) is changes


def test_bf16_network_keeps_an_fp32_ode_state(feats, style):
    """The half-precision path (GPU in practice; exercised on the CPU here): the network runs in
    bf16, the ODE state and the output stay fp32, RoPE frequencies stay fp32."""
    smooth = softened()
    ref = sample_motion(smooth, feats, style, steps=6, generator=seeded(0))
    half = smooth.to(torch.bfloat16)
    assert half.velocity_net.transformer.rotary_emb.inv_freq.dtype == torch.float32
    out = sample_motion(half, feats, style, steps=6, generator=seeded(0), mouth_amp=0.5,
                        blink=(torch.arange(96) % 7 == 0).long())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    same = sample_motion(half, feats, style, steps=6, generator=seeded(0))
    assert (same - ref).abs().max() < 0.03 * ref.abs().max()


def test_bad_sampler_arguments(model, feats):
    with pytest.raises(InputError, match="steps"):
        sample_motion(model, feats, steps=1)
    with pytest.raises(InputError, match="method"):
        sample_motion(model, feats, method="dopri5")
    with pytest.raises(InputError, match="temperature"):
        sample_motion(model, feats, temperature=-1.0)
    with pytest.raises(InputError, match="noise"):
        sample_motion(model, feats, noise=torch.zeros(47, 8))
    with pytest.raises(InputError, match="1024|32-d"):
        sample_motion(model, synthetic_features(96, dim=1024))
    with pytest.raises(InputError, match="crossfade"):
        sample_motion(model, feats, window_frames=10, overlap_frames=10)
    with pytest.raises(InputError, match="crossfade"):
        sample_motion(model, feats, overlap_frames=4, crossfade_frames=5)
    with pytest.raises(InputError, match="blink"):
        sample_motion(model, feats, blink=torch.full((96,), 2))


# --- long audio -----------------------------------------------------------------------------------

def test_plan_windows_covers_every_frame_once():
    for total in (1, 40, 41, 95, 300):
        ws = plan_windows(total, 40, 12, 4)
        assert ws[0].start == 0 and ws[-1].stop == total
        assert all(w.stop - w.start <= 40 for w in ws)
        for prev, w in zip(ws, ws[1:]):
            assert w.start + w.context + w.fade == prev.stop  # new frames continue the previous
            assert w.context == 8 and w.fade == 4
    assert plan_windows(40, 40, 12, 4) == [plan_windows(1000, 10_000, 50, 10)[0].__class__(0, 40)]


def test_short_audio_is_one_window(model, feats, style):
    a = sample_motion(model, feats, style, steps=4, generator=seeded(0))
    b = sample_motion(model, feats, style, steps=4, generator=seeded(0), window_frames=48)
    assert torch.equal(a, b)  # exact by construction: one window is the very same computation


def test_windows_keep_memory_flat(model, style, monkeypatch):
    lengths = []
    real = model.velocity
    monkeypatch.setattr(model, "velocity", lambda x, *a, **k: lengths.append(x.shape[1]) or real(x, *a, **k))
    long = synthetic_features(2000, seed=4)  # 1000 motion frames
    out = sample_motion(model, long, style, steps=2, cfg_scale=1.0, generator=seeded(0), window_frames=64,
                        overlap_frames=16, crossfade_frames=4)
    assert out.shape == (1000, 8) and torch.isfinite(out).all()
    assert max(lengths) == style.num_frames + 64  # independent of the audio length


def _global_position_features(num_frames):
    """HuBERT-like features whose channel 0 is the global 50 Hz frame index."""
    hub = torch.zeros(num_frames, 32)
    hub[:, 0] = torch.arange(num_frames, dtype=torch.float32)
    return AudioFeatures(hub, torch.zeros(num_frames), num_frames * 320 + 80)


def _jumps(x):
    return (x[1:] - x[:-1]).norm(dim=-1)


def test_window_seams_are_blended(model, monkeypatch):
    """A closed-form "model" whose windows disagree by an offset (as two independent samples
    would): smooth motion sin(2 pi p / 40) plus K * mean position of the window. Naive
    concatenation jumps at every seam; the blended windows never jump more than the motion's
    own frame-to-frame change."""
    monkeypatch.setattr(model, "encode_audio", lambda hubert, *a, **k: hubert)
    monkeypatch.setattr(model.velocity_net, "embed_audio", lambda cond_audio, n: cond_audio[:, ::2])

    def velocity(x, t, audio_emb, cond, cond_mask, drop, key_mask=None):
        p = audio_emb[..., :1] / 2  # global motion frame of every sequence position
        offset = 2.0 * p[cond_mask].mean() / 200
        return (torch.sin(2 * math.pi * p / 40) + offset).expand_as(x)  # constant field: y(1) = v

    monkeypatch.setattr(model, "velocity", velocity)
    feats = _global_position_features(400)  # 200 motion frames
    kw = dict(steps=3, cfg_scale=1.0, temperature=0.0, window_frames=60)
    naive = sample_motion(model, feats, overlap_frames=0, crossfade_frames=0, **kw)
    blended = sample_motion(model, feats, overlap_frames=20, crossfade_frames=12, **kw)
    own = 2 * math.pi / 40 * math.sqrt(8) * 1.01  # max |d/dframe| of the smooth motion, 8 dims
    assert _jumps(naive).max() > 2 * own  # the seams of independent windows show
    assert _jumps(blended).max() <= own


def test_window_seams_of_the_tiny_network(model, style):
    """With the real (random) network, seams are no rougher than the motion inside windows."""
    feats = synthetic_features(480, seed=6)
    out = sample_motion(model, feats, style, steps=6, generator=seeded(0), window_frames=80,
                        overlap_frames=20, crossfade_frames=8)
    jumps = _jumps(out)
    seams = set()
    for w in plan_windows(240, 80, 20, 8)[1:]:
        seams.update(range(w.start + w.context - 1, w.start + w.context + w.fade))
    inside = torch.tensor([i not in seams for i in range(len(jumps))])
    assert jumps[~inside].max() <= jumps[inside].max()


def test_seam_crossfade_weights_are_k_over_fade_plus_one():
    """The first `fade` new frames ramp linearly from the old window to the new one with weights
    k / (fade + 1), k = 1..fade (neither end fully old nor fully new); frames before the window's
    new part are left alone. Dyadic values: exact in fp32."""
    from mimictalk_lib.a2m.sampler import Window, _place

    out = torch.full((9, 2), 10.0)
    _place(out, torch.zeros(5, 2), Window(start=2, stop=8, context=1, fade=3))
    assert torch.equal(out[:, 0], torch.tensor([10, 10, 10, 7.5, 5, 2.5, 0, 0, 10]))


def test_sampler_refusals_name_the_problem(model, feats, style):
    """Each check on its own, with its exact message: a training-mode model, a non-finite CFG
    scale, audio without a motion frame (one frame is enough), and a style prompt whose motion
    alone has the wrong width."""
    model.train()
    try:
        with pytest.raises(ValueError, match=r"^ICS-A2M model is in training mode; call model\.eval\(\) before sampling$"):
            sample_motion(model, feats)
    finally:
        model.eval()
    with pytest.raises(InputError, match="^cfg_scale must be finite, got inf$"):
        sample_motion(model, feats, cfg_scale=math.inf)
    assert sample_motion(model, synthetic_features(2, seed=3), steps=2, generator=seeded(0)).shape == (1, 8)
    empty = AudioFeatures(feats.hubert[:1], feats.f0[:1], 400)
    assert empty.num_motion_frames == 0
    with pytest.raises(InputError, match=r"^audio features hold no motion frame; the audio is too short\.$"):
        sample_motion(model, empty)
    wide = StylePrompt(torch.zeros(12, 7), style.hubert, style.f0)
    with pytest.raises(InputError, match="^style prompt has 7-d motion and 32-d audio; the model expects 8-d motion and 32-d audio"):
        sample_motion(model, feats, wide)
