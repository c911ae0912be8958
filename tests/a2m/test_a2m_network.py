"""Numerics of the ICS-A2M network pieces: masking, CFG null branch, 50->25 Hz audio embedding,
RoPE, attention reference, f0 bins, precision policy."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mimictalk_lib.a2m import A2MConfig, InContextAudio2MotionModel, build_a2m, f0_to_coarse
from mimictalk_lib.a2m.transformer import Attention, RotaryEmbedding, apply_rotary
from mimictalk_lib import utils
from mimictalk_lib.errors import InputError
from tests.fixtures.tiny_a2m import tiny_a2m


@pytest.fixture(scope="module")
def model():
    return tiny_a2m(aux=True, seed=1)


def inputs(n=20, b=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, 8, generator=g)
    emb = torch.randn(b, n, 8, generator=g)
    cond = torch.randn(b, n, 8, generator=g)
    mask = torch.arange(n)[None].expand(b, n) >= 6  # first 6 frames are reference
    return x, torch.full((b,), 0.3), emb, cond, mask


def test_reference_and_predicted_frames_are_hidden_from_each_other(model):
    x, t, emb, cond, mask = inputs()
    no = torch.tensor([False])
    with torch.no_grad():
        v = model.velocity(x, t, emb, cond, mask, no)
        x2 = x.clone()
        x2[:, :6] += 5.0  # state on reference frames is zeroed
        cond2 = cond.clone()
        cond2[:, 6:] += 5.0  # reference on frames to predict is zeroed
        assert torch.allclose(model.velocity(x2, t, emb, cond2, mask, no), v, atol=1e-6)
        cond3 = cond.clone()
        cond3[:, :6] += 1.0
        assert (model.velocity(x, t, emb, cond3, mask, no) - v).abs().max() > 1e-3


def test_null_branch_replaces_the_whole_reference(model):
    x, t, emb, cond, mask = inputs()
    yes = torch.tensor([True])
    with torch.no_grad():
        v_null = model.velocity(x, t, emb, cond, mask, yes)
        assert torch.allclose(model.velocity(x, t, emb, cond * 0 + 3, mask, yes), v_null, atol=1e-6)
        null_everywhere = model.velocity_net.null_cond.expand_as(cond)
        as_cond = model.velocity(x, t, emb, null_everywhere, torch.zeros_like(mask), torch.tensor([False]))
        # null_cond on every frame, state zeroed on all frames except where mask says predict
        x_masked = x * mask[..., None]
        v_ref = model.velocity(x_masked, t, emb, null_everywhere, torch.zeros_like(mask), torch.tensor([False]))
        assert torch.allclose(as_cond, v_ref, atol=1e-6)


def test_batched_cfg_rows_equal_separate_calls(model):
    x, t, emb, cond, mask = inputs(b=1)
    with torch.no_grad():
        both = model.velocity(x.expand(2, -1, -1), t.expand(2), emb.expand(2, -1, -1), cond.expand(2, -1, -1),
                              mask.expand(2, -1), torch.tensor([False, True]))
        a = model.velocity(x, t, emb, cond, mask, torch.tensor([False]))
        b = model.velocity(x, t, emb, cond, mask, torch.tensor([True]))
    # batched GEMMs round differently; the near-argmax attention (logits up to 640 cos) amplifies it
    assert torch.allclose(both[:1], a, atol=1e-4) and torch.allclose(both[1:], b, atol=1e-4)


def test_padding_mask_isolates_real_frames(model):
    """Key-padding mask (upstream self_attn_mask): padded frames are never attended to. (The
    depthwise conv before the transformer is unmasked, as upstream, so only padded frames beyond
    its reach are changed.)"""
    x, t, emb, cond, mask = inputs(n=40)
    key_mask = torch.arange(40)[None] < 30
    no = torch.tensor([False])
    reach = model.cfg.conv_kernel // 2
    with torch.no_grad():
        v = model.velocity(x, t, emb, cond, mask, no, key_mask)
        x2 = x.clone()
        x2[:, 30 + reach:] = torch.randn(1, 10 - reach, 8) * 4
        v2 = model.velocity(x2, t, emb, cond, mask, no, key_mask)
        v3 = model.velocity(x2, t, emb, cond, mask, no, None)  # without the mask they would leak
    assert torch.allclose(v[:, :30], v2[:, :30], atol=1e-5)
    assert (v3[:, :30] - v[:, :30]).abs().max() > 1e-3


def test_audio_embedding_halves_the_rate_by_pair_means(model):
    g = torch.Generator().manual_seed(0)
    cond_audio = torch.randn(2, 16, model.cfg.cond_audio_dim, generator=g)
    with torch.no_grad():
        emb = model.velocity_net.embed_audio(cond_audio, 8)
        full = model.velocity_net.to_cond_emb(cond_audio)
    assert torch.allclose(emb, 0.5 * (full[:, 0::2] + full[:, 1::2]), atol=1e-6)


def test_encode_audio_aux_layout(model):
    g = torch.Generator().manual_seed(0)
    hubert = torch.randn(1, 12, 32, generator=g)
    f0 = torch.full((1, 12), 200.0)
    with torch.no_grad():
        a = model.encode_audio(hubert, f0)
        amp = model.encode_audio(hubert, f0, mouth_amp=torch.tensor([0.5]))
        null = model.encode_audio(hubert, f0, null_aux=True)
    cfg = model.cfg
    assert a.shape == (1, 12, cfg.cond_audio_dim) == (1, 12, 16 + 3 * 4)
    amp_slice = slice(cfg.audio_feat_dim + 2 * cfg.aux_dim, None)
    assert torch.allclose(a[..., amp_slice], model.mouth_amp_embed.expand(1, 12, -1))
    assert torch.allclose(amp[..., amp_slice], 0.5 * model.mouth_amp_embed.expand(1, 12, -1))
    assert torch.allclose(null[..., amp_slice], model.null_mouth_amp_embed.expand(1, 12, -1))
    assert torch.equal(a[..., : cfg.audio_feat_dim], null[..., : cfg.audio_feat_dim])


def test_attention_matches_reference_maths():
    """softmax(10 * qn . kn) v with per-head RMS-normalised, rotated q and k (rotate_half RoPE)."""
    torch.manual_seed(0)
    attn = Attention(dim=16, dim_head=8, heads=2, qk_norm_scale=10.0)
    with torch.no_grad():
        attn.q_norm.gamma.uniform_(0.5, 1.5)
        attn.k_norm.gamma.uniform_(0.5, 1.5)
    rope = RotaryEmbedding(8, 50_000.0)
    pos = torch.cat([torch.full((3,), -10_000), torch.arange(9)])
    cos, sin = rope(pos)
    x = torch.randn(2, 12, 16)
    key_mask = torch.ones(2, 12, dtype=torch.bool)
    key_mask[1, 9:] = False
    with torch.no_grad():
        out = attn(x, (cos, sin), key_mask)
        q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(2, 12, 2, 8).transpose(1, 2) for t in (q, k, v))
        q = F.normalize(q, dim=-1) * attn.q_norm.gamma * math.sqrt(8)
        k = F.normalize(k, dim=-1) * attn.k_norm.gamma * math.sqrt(8)

        def rot(t):  # pairs (i, i + 4) rotate by pos * theta^(-2i/8)
            t1, t2 = t[..., :4], t[..., 4:]
            ang = pos[:, None].float() * (1.0 / 50_000 ** (torch.arange(0, 8, 2) / 8))[None]
            return torch.cat([t1 * ang.cos() - t2 * ang.sin(), t2 * ang.cos() + t1 * ang.sin()], -1)

        sim = rot(q) @ rot(k).transpose(-1, -2) * 10
        sim = sim.masked_fill(~key_mask[:, None, None, :], -torch.finfo(sim.dtype).max)
        ref = (sim.softmax(-1) @ v).transpose(1, 2).reshape(2, 12, 16)
        ref = attn.to_out(ref)
    assert torch.allclose(out, ref, atol=1e-5)


def test_rope_frequencies_stay_fp32_under_half_precision():
    model = InContextAudio2MotionModel(A2MConfig.tiny())
    exact = model.velocity_net.transformer.rotary_emb.inv_freq.clone()
    model.to(torch.bfloat16)
    kept = model.velocity_net.transformer.rotary_emb.inv_freq
    assert kept.dtype == torch.float32 and torch.equal(kept, exact)
    assert model.velocity_net.to_pred.weight.dtype == torch.bfloat16


def test_half_precision_is_refused_on_cpu():
    sd = InContextAudio2MotionModel(A2MConfig.tiny()).state_dict()
    with pytest.raises(InputError, match="half precision"):
        build_a2m(sd, device="cpu", dtype=torch.float16)  # fp16 never on the CPU


def test_cpu_bf16_is_refused_without_native_bf16(monkeypatch):
    sd = InContextAudio2MotionModel(A2MConfig.tiny()).state_dict()
    monkeypatch.setattr(utils, "cpu_bf16_native", lambda: False)
    with pytest.raises(InputError, match="no native bf16.*Use fp32"):
        build_a2m(sd, device="cpu", dtype=torch.bfloat16)
    with pytest.raises(InputError, match="half precision"):  # the library's default policy elsewhere
        utils.check_device_dtype("cpu", torch.bfloat16)


@pytest.mark.skipif(not utils.cpu_bf16_native(), reason="this CPU has no native bf16 (AVX512-BF16 / AMX)")
def test_cpu_bf16_is_an_opt_in_on_cpus_with_native_bf16():
    sd = InContextAudio2MotionModel(A2MConfig.tiny()).state_dict()
    half = build_a2m(sd, device="cpu", dtype=torch.bfloat16)
    assert half.velocity_net.to_pred.weight.dtype == torch.bfloat16
    assert half.velocity_net.transformer.rotary_emb.inv_freq.dtype == torch.float32
    assert build_a2m(sd).velocity_net.to_pred.weight.dtype == torch.float32  # fp32 stays the default


def test_f0_to_coarse_bins():
    f0 = torch.tensor([0.0, 30.0, 50.0, 51.0, 100.0, 220.0, 440.0, 1100.0, 2000.0])
    coarse = f0_to_coarse(f0)
    assert coarse.dtype == torch.long
    assert coarse[:3].tolist() == [1, 1, 1]  # unvoiced and <= 50 Hz
    assert coarse[-2:].tolist() == [255, 255]  # >= 1100 Hz clamps to the top bin
    assert (coarse[3:-1].diff() > 0).all()
    # mel-scale position: 1 + 254 * (mel(f) - mel(50)) / (mel(1100) - mel(50)), rounded half up
    mel = lambda f: 1127 * np.log(1 + f / 700)  # noqa: E731
    for f, c in zip([100.0, 220.0, 440.0], coarse[4:7].tolist()):
        assert c == int(np.floor(1 + 254 * (mel(f) - mel(50)) / (mel(1100) - mel(50)) + 0.5))
    dense = f0_to_coarse(torch.linspace(0, 1500, 20001))
    assert dense.min() == 1 and dense.max() == 255 and (dense.diff() >= 0).all()


def test_joint_query_key_path_equals_the_separate_modules():
    """Attention normalises, scales and rotates queries and keys together, with a pre-negated sine
    written into the halves (issue 16): the same IEEE operations in the same order as q_norm / k_norm
    + apply_rotary, so the rotation is bit-identical; the stacked normalisation is compared to the
    fp32 noise floor (a reduction over a differently strided view)."""
    from mimictalk_lib.a2m.transformer import _rotate_, apply_rotary, signed_sine

    torch.manual_seed(0)
    attn = Attention(dim=32, dim_head=16, heads=2, qk_norm_scale=10.0)
    with torch.no_grad():
        attn.q_norm.gamma.uniform_(0.5, 1.5)
        attn.k_norm.gamma.uniform_(0.5, 1.5)
    pos = torch.cat([torch.full((4,), -10_000), torch.arange(11)])
    cos, sin = RotaryEmbedding(16, 50_000.0)(pos)
    x = torch.randn(2, 15, 32) * 3
    qk = torch.randn(2, 2, 2, 15, 16)
    assert torch.equal(_rotate_(qk.clone(), cos, signed_sine(sin)), apply_rotary(qk, cos, sin))
    with torch.no_grad():
        joint = attn(x, (cos, sin, signed_sine(sin)))  # the path Transformer.forward takes
        q, k, v = attn.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(2, 15, 2, 16).transpose(1, 2) for t in (q, k, v))
        q, k = apply_rotary(attn.q_norm(q), cos, sin), apply_rotary(attn.k_norm(k), cos, sin)
        ref = F.scaled_dot_product_attention(q, k, v, scale=10.0).transpose(1, 2).reshape(2, 15, 32)
        ref = attn.to_out(ref)
    assert torch.allclose(joint, ref, atol=1e-6, rtol=0)
    with torch.no_grad():  # without the signed sine (callers passing (cos, sin)): apply_rotary, same values
        assert torch.equal(attn(x, (cos, sin)), joint)


def test_in_place_norms_equal_the_out_of_place_formula():
    """RMSNorm / AdaptiveRMSNorm / GEGLU now work in place: same values as the formulas."""
    from mimictalk_lib.a2m.transformer import GEGLU, AdaptiveRMSNorm, RMSNorm

    torch.manual_seed(0)
    x, cond = torch.randn(2, 7, 16), torch.randn(2, 12)
    norm, ada = RMSNorm(16), AdaptiveRMSNorm(16, 12)
    with torch.no_grad():
        norm.gamma.uniform_(0.5, 1.5)
        ada.to_gamma.weight.normal_()
        ada.to_beta.weight.normal_()
        keep = x.clone()
        assert torch.equal(norm(x), F.normalize(x, dim=-1) * norm.scale * norm.gamma)
        gamma, beta = ada.to_gamma(cond)[:, None], ada.to_beta(cond)[:, None]
        assert torch.equal(ada(x, cond), F.normalize(x, dim=-1) * ada.scale * gamma + beta)
        y = torch.randn(2, 7, 32)
        assert torch.equal(GEGLU()(y), F.gelu(y[..., 16:]) * y[..., :16])
    assert torch.equal(x, keep)  # the input itself is never modified


def test_velocity_runs_with_autograd_on_and_equals_the_no_grad_value(model):
    """The in-place fast paths are for inference; with grad enabled (parameters require grad) the
    network still runs, with the same products and sums out of place (``out=`` cannot be recorded)."""
    x, t, emb, cond, mask = inputs()
    null = torch.tensor([False])
    with torch.no_grad():
        fast = model.velocity(x, t, emb, cond, mask, null)
    slow = model.velocity(x, t, emb, cond, mask, null)
    assert slow.requires_grad
    assert torch.equal(slow.detach(), fast)  # same operations in the same order (see _rotate_)


@pytest.mark.parametrize("dim_head", [16, 64, 32])  # qk-norm scale 4, 8 (folded into the gains), sqrt(32) (not)
def test_qk_gain_and_scale_in_one_product_equal_two(dim_head):
    """Attention multiplies the normalised q, k by gains * sqrt(d) in one pass when sqrt(d) is a power
    of two: bit-identical to the two products (scaling by 2^k commutes with rounding)."""
    torch.manual_seed(0)
    attn = Attention(dim=32, dim_head=dim_head, heads=2, qk_norm_scale=10.0)
    with torch.no_grad():
        attn.q_norm.gamma.uniform_(0.1, 1.9)
        attn.k_norm.gamma.uniform_(0.1, 1.9)
        x = torch.randn(2, 13, 32) * 3
        cos, sin = RotaryEmbedding(dim_head, 50_000.0)(torch.arange(13))
        seen = {}
        real = F.scaled_dot_product_attention

        def spy(q, k, v, **kw):
            seen["q"], seen["k"] = q, k
            return real(q, k, v, **kw)

        try:
            F.scaled_dot_product_attention = spy
            attn(x, (cos, sin))
        finally:
            F.scaled_dot_product_attention = real
        q, k, _ = (t.view(2, 13, 2, dim_head).transpose(1, 2) for t in attn.to_qkv(x).chunk(3, dim=-1))
        two = [apply(F.normalize(t, dim=-1).mul_(norm.gamma).mul_(dim_head**0.5), cos, sin)
               for t, norm, apply in ((q, attn.q_norm, apply_rotary), (k, attn.k_norm, apply_rotary))]
    assert torch.equal(seen["q"], two[0]) and torch.equal(seen["k"], two[1])
