"""Our LPIPS (AlexNet, v0.1): weight-file loading and the distance against a direct formula.

(Parity with the ``lpips`` 0.1.4 package, random AlexNet weights and the real v0.1 heads, was
checked outside the repo: max-abs difference <= 7.5e-9 at 40x52 .. 512x512.)"""

import pytest
import torch
import torch.nn.functional as F

from mimictalk_lib.adapt.lpips import LPIPS_SCALE, LPIPS_SHIFT, MIN_SIZE, load_lpips
from mimictalk_lib.errors import CheckpointError, InputError


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    """Random weights saved in the two original layouts (torchvision AlexNet, LPIPS heads)."""
    g = torch.Generator().manual_seed(0)
    convs = {0: (64, 3, 11), 3: (192, 64, 5), 6: (384, 192, 3), 8: (256, 384, 3), 10: (256, 256, 3)}
    alex = {}
    for i, (o, c, k) in convs.items():
        alex[f"features.{i}.weight"] = torch.randn(o, c, k, k, generator=g) * (2 / (c * k * k)) ** 0.5
        alex[f"features.{i}.bias"] = torch.randn(o, generator=g) * 0.01
    alex["classifier.1.weight"] = torch.zeros(4, 9216)  # present in the real file, ignored
    heads = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate((64, 192, 384, 256, 256))}
    d = tmp_path_factory.mktemp("lpips")
    torch.save(alex, d / "alexnet.pth")
    torch.save(heads, d / "alex.pth")
    return d / "alexnet.pth", d / "alex.pth", alex, heads


def _reference(x, y, alex, heads):
    """LPIPS written out directly from the paper's definition, with the raw state dicts."""
    shift, scale = torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1)

    def taps(z):
        z = (z - shift) / scale
        out = []
        for i, (s, p) in {0: (4, 2), 3: (1, 2), 6: (1, 1), 8: (1, 1), 10: (1, 1)}.items():
            if i in (3, 6):
                z = F.max_pool2d(z, 3, 2)
            z = F.relu(F.conv2d(z, alex[f"features.{i}.weight"], alex[f"features.{i}.bias"], stride=s, padding=p))
            out.append(z)
        return out

    total = 0
    for k, (a, b) in enumerate(zip(taps(x), taps(y))):
        a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        w = heads[f"lin{k}.model.1.weight"].view(1, -1, 1, 1)
        total = total + ((a - b) ** 2 * w).sum(1).mean(dim=(1, 2))
    return total


def test_matches_direct_formula_and_properties(weight_files):
    alex_path, heads_path, alex, heads = weight_files
    model = load_lpips(alex_path, heads_path)
    assert not any(p.requires_grad for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 3, 64, 48, generator=g) * 2 - 1
    y = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
    d = model(x, y)
    assert d.shape == (2,)
    assert torch.allclose(d, _reference(x, y, alex, heads), rtol=1e-5, atol=1e-7)
    assert torch.allclose(model(y, x), d)  # symmetric
    assert model(x, x).abs().max() == 0
    assert (d > 0).all()
    x.requires_grad_(True)
    model(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_bad_inputs_and_files(weight_files, tmp_path):
    alex_path, heads_path, _, _ = weight_files
    model = load_lpips(alex_path, heads_path)
    small = torch.zeros(1, 3, MIN_SIZE - 1, 64)
    with pytest.raises(InputError, match="at least"):
        model(small, small)
    with pytest.raises(InputError, match="same shape"):
        model(torch.zeros(1, 3, 64, 64), torch.zeros(1, 3, 64, 32))
    with pytest.raises(CheckpointError, match="missing"):
        load_lpips(heads_path, heads_path)  # heads file given as AlexNet
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_lpips(tmp_path / "junk.pth", heads_path)
