"""Our LPIPS (AlexNet, v0.1): weight-file loading, the distance against a direct formula, and
parity with the ``lpips`` 0.1.4 package (random AlexNet weights and its shipped v0.1 heads loaded
into both; no download)."""

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


# --- parity with the lpips package ------------------------------------------------------------


def _torchvision_alexnet_stand_in():
    """A minimal ``torchvision`` exposing ``models.alexnet`` (random weights, torchvision's layer
    layout ``features.0 .. features.12``), for importing the lpips package where torchvision is not
    installed: torchvision's PyPI wheels pin a CUDA torch, so the test environment keeps it out
    (.ci/run installs lpips with --no-deps). lpips uses nothing else from torchvision for 'alex'."""
    import types

    from torch import nn

    def alexnet(pretrained=False, weights=None, **kwargs):
        assert not pretrained and weights is None, "the parity test must not download ImageNet weights"
        model = nn.Module()
        model.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        )
        return model

    tv = types.ModuleType("torchvision")
    tv.models = types.ModuleType("torchvision.models")
    tv.models.alexnet = alexnet
    return tv


@pytest.fixture
def lpips_package(monkeypatch):
    """The ``lpips`` PyPI package (0.1.4), imported with real torchvision if usable, else with the
    AlexNet stand-in; its modules are dropped again afterwards. Skips where it is not installed,
    except in CI (CI=true), where .ci/run installs it and a skip would hide the check."""
    import importlib
    import os
    import sys

    try:
        importlib.import_module("torchvision.models")
    except Exception:  # absent, or a build that does not match this torch
        tv = _torchvision_alexnet_stand_in()
        monkeypatch.setitem(sys.modules, "torchvision", tv)
        monkeypatch.setitem(sys.modules, "torchvision.models", tv.models)
    before = set(sys.modules)
    try:
        module = importlib.import_module("lpips")
    except ImportError as e:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip(f"the lpips package is not installed ({e}); .ci/run installs it")
    yield module
    for name in set(sys.modules) - before:
        if name == "lpips" or name.startswith("lpips."):
            del sys.modules[name]


def test_parity_with_the_lpips_package(lpips_package):
    """The same random AlexNet and lpips' own shipped v0.1 heads in both implementations; the
    distances agree to fp32 noise (both compute the same convolutions in the same order; only the
    final sums over five layers and the spatial means may associate differently: ~1e-7 relative)."""
    with torch.random.fork_rng(devices=[]):  # lpips' random trunk draws from the global generator
        torch.manual_seed(0)
        ref = lpips_package.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False).eval()
    heads = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    assert heads and all(v.abs().sum() > 0 for v in heads.values())  # the real heads, loaded from the package
    from mimictalk_lib.adapt.lpips import LPIPS, lpips_state_dict

    ours = LPIPS()
    missing, unexpected = ours.load_state_dict(lpips_state_dict(ref.state_dict(), ref.state_dict()), strict=False)
    assert not missing and not unexpected
    g = torch.Generator().manual_seed(5)
    for h, w in ((31, 31), (40, 52), (96, 64)):
        x = torch.rand(3, 3, h, w, generator=g) * 2 - 1
        y = (x + 0.3 * torch.randn(x.shape, generator=g)).clamp(-1, 1)
        with torch.no_grad():
            want = ref(x, y).flatten()
            got = ours(x, y)
        assert want.abs().min() > 1e-3  # distinct images: a distance well above the noise floor
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
