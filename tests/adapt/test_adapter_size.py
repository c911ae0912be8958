"""The README's adapter size, computed from the full-size shapes (meta device: nothing is
allocated or written): tri-grid [1, 3, 96, 256, 256], LoRA (secc2plane_sr, r=2), norm buffers,
the base probe and the identity images at 512²."""

import re

import torch

from mimictalk_lib.adapt.adapter import _HALF_FIELDS, NORM_SUFFIXES, PROBES_PER_TENSOR, base_parameters
from mimictalk_lib.lora.inject import inject_lora, lora_state_dict
from mimictalk_lib.lora.targets import DEFAULT_LORA_MODE, DEFAULT_LORA_R
from mimictalk_lib.renderer.config import RendererConfig
from mimictalk_lib.renderer.model import Renderer

HEADER_BYTES = 60_000  # the safetensors JSON header (about 300 tensor entries + metadata): < 0.1 MB


def adapter_bytes(triplane_bytes_per_value: int) -> int:
    cfg = RendererConfig.full("mimictalk")
    with torch.device("meta"):
        base = Renderer(cfg)
        model = inject_lora(base, DEFAULT_LORA_MODE, DEFAULT_LORA_R)
    size = cfg.image_resolution
    total = sum(v.numel() * 4 for v in lora_state_dict(model).values())  # saved as fp32
    total += sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n.endswith(NORM_SUFFIXES))
    total += 4 * sum(min(PROBES_PER_TENSOR, p.numel()) for p in base_parameters(base).values())
    total += 3 * cfg.triplane_hid_dim * cfg.triplane_depth * cfg.plane_resolution**2 * triplane_bytes_per_value
    images = {"src_frame": 3, "bg": 3, "torso_ref": 3, "segmap": 6}
    total += sum(c * size * size * (2 if name in _HALF_FIELDS else 1) for name, c in images.items())  # fp16 / uint8
    total += 4 * (80 + 68 * 3 + 64 + 3 + 3)  # id, src_kp, src_exp, src_euler, src_trans
    return total + HEADER_BYTES // 2


def test_readme_states_the_saved_adapter_size(repo_root):
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    m = re.search(r"Save Adapter writes is ([\d.]+) MB \(([\d.]+) MB with the fp16 tri-grid", readme)
    assert m, "README: the adapter size sentence moved"
    fp32, fp16 = float(m.group(1)), float(m.group(2))
    # the header is estimated within +-HEADER_BYTES / 2: the stated sizes must match to 0.1 MB
    assert abs(fp32 - adapter_bytes(4) / 1e6) < 0.1, adapter_bytes(4)
    assert abs(fp16 - adapter_bytes(2) / 1e6) < 0.1, adapter_bytes(2)
