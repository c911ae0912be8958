"""The README's adapter size is what save_adapter writes at the full configuration: tri-grid
[1, 3, 96, 256, 256], LoRA (secc2plane_sr, r=2), norm buffers, the base probe, the identity images
at 512² and a trained adapter's metadata (the model is built on the meta device; the file holds
zeros of the real shapes and dtypes)."""

import re

import torch

from mimictalk_lib.adapt.adapter import NORM_SUFFIXES, PROBES_PER_TENSOR, base_parameters
from mimictalk_lib.lora.inject import inject_lora, lora_state_dict
from mimictalk_lib.lora.targets import DEFAULT_LORA_MODE, DEFAULT_LORA_R
from mimictalk_lib.renderer.config import RendererConfig
from mimictalk_lib.renderer.model import Renderer


def _full_size_adapter():
    """An adapter with the full-size shapes (zeros: the file size does not depend on the values) and
    the metadata a trained adapter carries, built as Trainer.adapter builds it."""
    from mimictalk_lib.adapt.adapter import Adapter, AdapterIdentity
    from mimictalk_lib.lora.inject import LoraSpec
    from mimictalk_lib.adapt.train import AdaptConfig

    cfg = RendererConfig.full("mimictalk")
    with torch.device("meta"):
        base = Renderer(cfg)
        model = inject_lora(base, DEFAULT_LORA_MODE, DEFAULT_LORA_R)

    def zeros(t):
        return torch.zeros(t.shape, dtype=t.dtype)

    s = cfg.image_resolution
    probe = sum(min(PROBES_PER_TENSOR, p.numel()) for p in base_parameters(base).values())
    identity = AdapterIdentity(src_frame=torch.zeros(1, 3, s, s), id=torch.zeros(1, 80), src_kp=torch.zeros(68, 3),
                               src_exp=torch.zeros(1, 64), src_euler=torch.zeros(1, 3), src_trans=torch.zeros(1, 3),
                               bg=torch.zeros(1, 3, s, s), torso_ref=torch.zeros(1, 3, s, s),
                               segmap=torch.zeros(1, 6, s, s), video_id="person.mp4")
    losses = {k: 0.123456 for k in ("total", "l1", "lpips", "lip_l1", "lip_lpips", "density", "entropy", "blink")}
    return Adapter(
        lora={k: zeros(v) for k, v in lora_state_dict(model).items()},
        spec=LoraSpec(DEFAULT_LORA_MODE, DEFAULT_LORA_R),
        triplane=torch.zeros(1, 3, cfg.triplane_hid_dim * cfg.triplane_depth, cfg.plane_resolution, cfg.plane_resolution),
        identity=identity,
        norm_state={n.replace(".base_layer", ""): zeros(b) for n, b in model.named_buffers() if n.endswith(NORM_SUFFIXES)},
        base_probe=torch.zeros(probe),
        metadata={"source": "trained", "base": {"structure_sha256": "0" * 64},
                  "training": dict(AdaptConfig().to_dict(), steps_done=2000, num_frames=1500, identity_sha256="0" * 64),
                  "final_losses": losses, "validation": None},
    )


def test_save_adapter_writes_the_readme_size(repo_root, tmp_path):
    """The file Save Adapter's writer produces at the full configuration (not an estimate): the
    README's two sizes to its 0.1 MB."""
    from mimictalk_lib.adapt.adapter import save_adapter

    m = re.search(r"Save Adapter writes is ([\d.]+) MB \(([\d.]+) MB with the fp16 tri-grid", (repo_root / "README.md").read_text())
    assert m, "README: the adapter size sentence moved"
    adapter = _full_size_adapter()
    for stated, dtype in ((m.group(1), torch.float32), (m.group(2), torch.float16)):
        path = tmp_path / f"{dtype}.safetensors"
        save_adapter(path, adapter, triplane_dtype=dtype)
        assert f"{path.stat().st_size / 1e6:.1f}" == stated, (path.stat().st_size, stated)
