"""CUDA paths: the same computations on a GPU agree with the CPU, and half precision stays close
to fp32. These run only where CUDA is available (the lent GPU machine); CI has no GPU and skips
them with the reason printed.

TF32 is switched off for the fp32 comparisons: cuDNN convolutions default to TF32 on Ampere and
later, which changes results at the 1e-3 level; the CPU has no such mode.
"""

import contextlib
import dataclasses

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")

CUDA = torch.device("cuda")


@contextlib.contextmanager
def exact_fp32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _to(inputs: dict, device, dtype=None) -> dict:
    def move(v):
        if dataclasses.is_dataclass(v):  # the RenderSource
            return type(v)(*(move(getattr(v, f.name)) for f in dataclasses.fields(v)))
        v = v.to(device)
        return v.to(dtype) if dtype is not None and v.is_floating_point() else v

    return {k: move(v) for k, v in inputs.items()}


def test_tiny_renderer_on_cuda_matches_cpu_and_bf16_stays_close():
    import copy

    from tests.fixtures.tiny_renderer import random_renderer, renderer_inputs

    model = random_renderer("mimictalk", lora_rank=2, seed=3)
    inputs = renderer_inputs(model.cfg, frames=3, seed=3)
    with torch.inference_mode():
        ref = model.render(**inputs)
        with exact_fp32():
            gpu = copy.deepcopy(model).to(CUDA).render(**_to(inputs, CUDA))
            chunked = copy.deepcopy(model).to(CUDA).render_frames(**_to(inputs, CUDA), chunk_size=2,
                                                                  output_device="cpu")
        half = copy.deepcopy(model).to(CUDA, torch.bfloat16).render(**_to(inputs, CUDA, torch.bfloat16))
    for name in ("image", "image_raw", "alpha", "depth"):
        assert (getattr(gpu, name).cpu() - getattr(ref, name)).abs().max() < 1e-4, name
    assert (chunked.image - ref.image).abs().max() < 1e-4
    assert torch.isfinite(half.image).all()
    # bf16 keeps ~3 significant digits; the image is in [-1, 1]
    assert (half.image.float().cpu() - ref.image).abs().mean() < 2e-2


@pytest.mark.slow
def test_full_renderer_on_cuda_matches_cpu():
    """The official-size network (random weights, converged spectral norms) on one frame."""
    import copy

    from mimictalk_lib.renderer import Renderer, RendererConfig
    from tests.fixtures.tiny_renderer import converge_spectral_norms_, perturb_, renderer_inputs

    torch.manual_seed(0)
    model = Renderer(RendererConfig.full("mimictalk"))
    perturb_(model, torch.Generator().manual_seed(1))
    converge_spectral_norms_(model)
    model.eval()
    inputs = renderer_inputs(model.cfg, frames=1, seed=1)
    with torch.inference_mode():
        ref = model.render(**inputs)
        with exact_fp32():
            gpu = copy.deepcopy(model).to(CUDA).render(**_to(inputs, CUDA))
    assert (gpu.image.cpu() - ref.image).abs().max() < 1e-3


def test_secc_maps_on_cuda_match_cpu(tmp_path):
    from mimictalk_lib.face import load_face_model, render_secc
    from tests.fixtures.synthetic_bfm import write_synthetic_face_model

    fm = load_face_model(write_synthetic_face_model(tmp_path / "bfm"))
    g = torch.Generator().manual_seed(0)
    id_, exp = torch.randn(1, 80, generator=g).expand(4, -1), torch.randn(4, 64, generator=g)
    ref = render_secc(fm, id_, exp, size=128)
    gpu = render_secc(copy_to(fm, CUDA), id_.to(CUDA), exp.to(CUDA), size=128).cpu()
    differ = ((gpu - ref).abs() > 1e-3).any(1)  # per pixel
    # identical coverage except possibly a few pixels on exact edge ties (float rounding)
    assert differ.float().mean() < 1e-3
    assert (gpu[~differ.unsqueeze(1).expand_as(gpu)] - ref[~differ.unsqueeze(1).expand_as(ref)]).abs().max() < 1e-4


def copy_to(module, device):
    import copy

    return copy.deepcopy(module).to(device)


def test_audio_to_motion_on_cuda_matches_cpu():
    from mimictalk_lib.a2m import sample_motion
    from tests.fixtures.tiny_a2m import synthetic_features, tiny_a2m

    model = tiny_a2m(aux=True, seed=2)
    with torch.no_grad():  # trained-like attention sharpness; q/k gammas of 1 make a random net chaotic
        for name, p in model.named_parameters():
            if name.endswith(("q_norm.gamma", "k_norm.gamma")):
                p.fill_(0.125)
    feats = synthetic_features(96, seed=2)
    kw = dict(steps=8, cfg_scale=1.5, generator=torch.Generator().manual_seed(5))
    ref = sample_motion(model, feats, **kw)
    kw["generator"] = torch.Generator().manual_seed(5)
    with exact_fp32():
        gpu = sample_motion(copy_to(model, CUDA), feats, **kw)
    assert gpu.shape == ref.shape
    assert (gpu.cpu() - ref).abs().max() < 1e-4
    kw["generator"] = torch.Generator().manual_seed(5)
    half = sample_motion(copy_to(model, CUDA).to(torch.bfloat16), feats, **kw)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()  # the ODE state stays fp32
    # a random tiny transformer amplifies bf16 rounding; the motion must still follow fp32 closely
    assert torch.corrcoef(torch.stack([half.cpu().flatten(), ref.flatten()]))[0, 1] > 0.8


def test_adaptation_trains_on_cuda():
    from mimictalk_lib.adapt.train import AdaptConfig, Trainer
    from tests.adapt.synthetic import make_data
    from tests.fixtures.tiny_renderer import random_renderer

    base = random_renderer("mimictalk", seed=5)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    trainer = Trainer(base, make_data(base), None,
                      AdaptConfig(steps=10, batch_size=2, norm_mode="eval", lr=2e-2, lr_triplane=2e-2, preview_every=0),
                      device=CUDA)
    losses = [trainer.train_step()["total_loss"] for _ in range(10)]
    assert trainer.triplane.device.type == "cuda"
    assert all(torch.isfinite(torch.as_tensor(float(x))) for x in losses)
    assert float(losses[-1]) < float(losses[0])
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # base untouched


def test_adaptation_resumes_on_cuda(tmp_path):
    """A checkpoint resumed on the GPU puts every tensor of the run there (the regulariser's anchor,
    Adam's moments) and keeps the accelerator's own RNG stream; the next step runs."""
    from mimictalk_lib.adapt.resume import load_checkpoint
    from mimictalk_lib.adapt.train import AdaptConfig, Trainer, train_adapter
    from tests.adapt.synthetic import make_data
    from tests.fixtures.tiny_renderer import random_renderer

    base = random_renderer("mimictalk", seed=5)
    data = make_data(base)
    cfg = AdaptConfig(steps=2, norm_mode="upstream", lr=2e-2, lr_triplane=2e-2, preview_every=0)
    train_adapter(base, data, None, AdaptConfig(**dict(cfg.to_dict(), steps=1)), device=CUDA, work_dir=tmp_path)
    trainer = Trainer(base, data, None, cfg, device=CUDA)
    load_checkpoint(trainer, tmp_path / "checkpoint.safetensors")
    assert trainer.step == 1 and set(trainer.global_rng) == {"cpu", "cuda"}
    assert trainer.triplane.device.type == trainer.triplane_init.device.type == "cuda"
    moments = [v for s in trainer.optimizer.state.values() for k, v in s.items() if k != "step"]
    assert moments and all(v.device.type == "cuda" for v in moments)
    assert torch.isfinite(torch.as_tensor(trainer.train_step()["total_loss"]))
