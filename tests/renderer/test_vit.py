"""Mix Transformer pieces: attention against an explicit reference, Mix-FFN, stochastic depth,
token layout and the LayerNorm eps each renderer ViT uses."""

import pytest
import torch
import torch.nn.functional as F

from mimictalk_lib.renderer.img2plane import CanoBackboneConfig, CanoImg2PlaneBackbone
from mimictalk_lib.renderer.segformer import SeccBackboneConfig, SeccImg2PlaneBackbone
from mimictalk_lib.renderer.vit import (EfficientSelfAttention, MixFFN, OverlapPatchEmbed,
                                        TransformerBlock, map_to_tokens, tokens_to_map)


def explicit_attention(attn: EfficientSelfAttention, x, h, w):
    """softmax(q kᵀ / √d) v written with plain reshapes; kv packs [keys | values], each
    head-major, as upstream's ``reshape(B, N, 2, heads, d)``."""
    b, n, c = x.shape
    heads, d = attn.num_heads, c // attn.num_heads
    q = attn.q(x).reshape(b, n, heads, d).permute(0, 2, 1, 3)
    ctx = x
    if attn.sr_ratio > 1:
        m = x.permute(0, 2, 1).reshape(b, c, h, w)
        ctx = attn.norm(attn.sr(m).reshape(b, c, -1).permute(0, 2, 1))
    kv = attn.kv(ctx).reshape(b, -1, 2, heads, d).permute(2, 0, 3, 1, 4)
    weights = (q @ kv[0].transpose(-2, -1) * d**-0.5).softmax(-1)
    return attn.proj((weights @ kv[1]).transpose(1, 2).reshape(b, n, c))


@pytest.mark.parametrize("sr_ratio", [1, 2, 4])
def test_attention_matches_explicit_reference(sr_ratio):
    torch.manual_seed(0)
    attn = EfficientSelfAttention(24, 3, sr_ratio=sr_ratio).eval()
    x = torch.randn(2, 8 * 8, 24)
    torch.testing.assert_close(attn(x, 8, 8), explicit_attention(attn, x, 8, 8), rtol=1e-5, atol=1e-5)


def test_attention_shrinks_keys_only_with_sr():
    attn = EfficientSelfAttention(16, 2, sr_ratio=2)
    assert attn.sr.kernel_size == (2, 2) and attn.sr.stride == (2, 2)
    assert not hasattr(EfficientSelfAttention(16, 2), "sr")
    with pytest.raises(ValueError, match="divisible"):
        EfficientSelfAttention(10, 3)


def test_mix_ffn_is_fc_dwconv_gelu_fc():
    torch.manual_seed(0)
    ffn = MixFFN(8, 16)
    x = torch.randn(1, 4 * 4, 8)
    hidden = tokens_to_map(ffn.fc1(x), 4, 4)
    ref = ffn.fc2(F.gelu(map_to_tokens(F.conv2d(hidden, ffn.dwconv.dwconv.weight,
                                                ffn.dwconv.dwconv.bias, padding=1, groups=16))))
    torch.testing.assert_close(ffn(x, 4, 4), ref)
    assert ffn.dwconv.dwconv.groups == 16


def test_tokens_are_row_major():
    m = torch.arange(2 * 3 * 4, dtype=torch.float32).view(1, 2, 3, 4)
    t = map_to_tokens(m)
    assert t.shape == (1, 12, 2) and t[0, 5, 1] == m[0, 1, 1, 1]  # token 5 = row 1, column 1
    assert torch.equal(tokens_to_map(t, 3, 4), m)


def test_patch_embed_overlaps_and_returns_grid_size():
    emb = OverlapPatchEmbed(3, 8, patch_size=7, stride=4)
    tokens, h, w = emb(torch.zeros(1, 3, 32, 32))
    assert (h, w) == (8, 8) and tokens.shape == (1, 64, 8)
    assert emb.proj.padding == (3, 3)


def test_drop_path_only_in_training():
    torch.manual_seed(0)
    block = TransformerBlock(8, 2, mlp_ratio=2, drop_path=0.5)
    x = torch.randn(64, 4, 8)
    block.eval()
    assert torch.equal(block(x, 2, 2), block(x, 2, 2))
    block.train()
    torch.manual_seed(1)
    out = block(x, 2, 2)
    block.eval()
    full = block(x, 2, 2)
    untouched = (out == x).all(dim=(1, 2))  # both branches dropped for these samples
    assert 0 < untouched.sum() < 64
    assert not torch.allclose(out, full)


def test_layer_norm_eps_per_user():
    """MiT block and stage norms use eps 1e-6; everything else the LayerNorm default 1e-5."""
    secc = SeccImg2PlaneBackbone(SeccBackboneConfig.tiny())
    cano = CanoImg2PlaneBackbone(CanoBackboneConfig.tiny())
    mit = secc.mix_vit
    assert mit.block1[0].norm1.eps == 1e-6 and mit.block2[0].norm2.eps == 1e-6
    assert mit.norm4.eps == 1e-6
    assert mit.patch_embed1.norm.eps == 1e-5 and mit.block1[0].attn.norm.eps == 1e-5
    for vit in (cano.low_reso_vit, cano.triplane_predictor_vit):
        assert vit.block1.norm1.eps == 1e-5 and vit.patch_embed.norm.eps == 1e-5
    assert cano.triplane_predictor_vit.block1.attn.norm.eps == 1e-5


def test_stochastic_depth_rates_grow_linearly_over_mit_blocks():
    mit = SeccImg2PlaneBackbone(SeccBackboneConfig.full()).mix_vit
    rates = [blk.drop_path for i in range(1, 5) for blk in getattr(mit, f"block{i}")]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.1, 8))
