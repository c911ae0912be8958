"""HuBERT-large speech features (1024-d, 50 Hz) as upstream MimicTalk computes them
(`data_gen/utils/process_audio/extract_hubert.py`, `inference/real3d_infer.py:get_hubert`).

- Model: `transformers.HubertModel` from the files of facebook/hubert-large-ls960-ft; the
  encoder's `last_hidden_state` is the feature.
- Normalisation: the processor's zero-mean / unit-variance over the WHOLE signal, in float32:
  (x - mean) / sqrt(var + 1e-7) (Wav2Vec2FeatureExtractor, do_normalize=True).
- Clips: the CNN front end equals one Conv1d with kernel 400 and stride 320, so T samples give
  floor((T - 400) / 320) + 1 = floor((T - 80) / 320) frames. Long audio runs in clips of 1000
  frames (320 000 samples) whose input is extended by kernel - stride = 80 samples, so clip c
  starts at sample 320 000 c and yields exactly frames [1000 c, 1000 c + 1000). The front-end
  output concatenates exactly; the transformer sees only its own clip, as upstream.
- Padding: the frame count is zero-padded to a multiple of 8 (`pad_to_multiple`).
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from torch import nn

from ..errors import AssetMissingError
from ..utils import ProgressFn, check_device_dtype, report
from .audio import check_speech

KERNEL = 400  # receptive field of HuBERT's conv front end (samples)
STRIDE = 320  # its total stride (samples): 20 ms at 16 kHz -> 50 Hz features
CLIP_FRAMES = 1000  # upstream clip_length = stride * 1000 samples
FRAME_MULTIPLE = 8  # upstream pads the HuBERT frame count to a multiple of 8
NORM_EPS = 1e-7  # Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm


def num_hubert_frames(num_samples: int) -> int:
    """Frames HuBERT yields for `num_samples` samples: floor((T - (kernel - stride)) / stride)."""
    return max(0, (num_samples - (KERNEL - STRIDE)) // STRIDE)


def pad_to_multiple(feats: torch.Tensor, multiple: int = FRAME_MULTIPLE) -> torch.Tensor:
    """Zero-pad [T, C] features at the end to a multiple of `multiple` frames."""
    extra = (-feats.shape[0]) % multiple
    return torch.nn.functional.pad(feats, (0, 0, 0, extra))


def normalize_waveform(wav: np.ndarray) -> np.ndarray:
    """Zero-mean unit-variance over the whole signal, float32 numpy ops as the HF processor."""
    x = np.asarray(wav, dtype=np.float32)
    return (x - x.mean()) / np.sqrt(x.var() + NORM_EPS)


def hubert_large_config():
    """`HubertConfig` of facebook/hubert-large-ls960-ft (for random-weight benchmarks)."""
    from transformers import HubertConfig

    return HubertConfig(
        hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
        feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True,
        conv_dim=(512,) * 7, conv_kernel=(10, 3, 3, 3, 3, 2, 2), conv_stride=(5, 2, 2, 2, 2, 2, 2),
        num_conv_pos_embeddings=128, num_conv_pos_embedding_groups=16, layer_norm_eps=1e-5,
        vocab_size=32,
    )


class HubertEncoder(nn.Module):
    """A `transformers.HubertModel` plus upstream's input normalisation and clip schedule.

    Call it on mono 16 kHz audio to get unpadded features [floor((T - 80) / 320), hidden] (fp32,
    CPU)."""

    def __init__(self, model: nn.Module, do_normalize: bool = True):
        super().__init__()
        self.model = model.eval()
        self.do_normalize = do_normalize

    @classmethod
    def from_config(cls, config, device="cpu", dtype=torch.float32) -> "HubertEncoder":
        """Random-initialised HuBERT (tests and benchmarks)."""
        from transformers import HubertModel

        check_device_dtype(device, dtype)
        return cls(HubertModel(config).to(device=device, dtype=dtype))

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.inference_mode()
    def forward(
        self,
        wav: np.ndarray | torch.Tensor,
        *,
        clip_frames: int = CLIP_FRAMES,
        on_step: ProgressFn | None = None,
        normalized: bool = False,
    ) -> torch.Tensor:
        """normalized=True: `wav` is already normalised by the caller (e.g. a live stream with
        its running level) and may be silent; the encoder's own normalisation and the silence
        check are skipped."""
        if isinstance(wav, torch.Tensor):
            wav = wav.detach().cpu().numpy()
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        if not normalized:
            check_speech(wav, "audio")
        x = normalize_waveform(wav) if self.do_normalize and not normalized else wav
        total = num_hubert_frames(len(x))
        param = next(self.model.parameters())
        starts = list(range(0, total, clip_frames))
        out = []
        for i, first in enumerate(starts):
            last = min(first + clip_frames, total)  # frames [first, last)
            # frame j reads samples [320 j, 320 j + 400)
            clip = torch.from_numpy(x[STRIDE * first: STRIDE * (last - 1) + KERNEL])
            clip = clip.to(device=param.device, dtype=param.dtype)[None]
            hidden = self.model(clip).last_hidden_state[0]  # [last - first, hidden]
            out.append(hidden.float().cpu())
            report(on_step, i + 1, len(starts), stage="hubert")
        return torch.cat(out, dim=0)


HUBERT_CONFIG_LIMITS = {
    "hidden_size": 4096, "intermediate_size": 16384, "num_hidden_layers": 96, "num_attention_heads": 64,
    "num_conv_pos_embeddings": 1024, "num_conv_pos_embedding_groups": 64, "vocab_size": 100_000,
    "conv_dim": 4096, "conv_kernel": 64, "conv_stride": 64, "num_feat_extract_layers": 16,
}
"""Upper bounds of the sizes a HuBERT config.json may state (hubert-large: 1024 / 4096 / 24 / 16 /
128 / 16 / 32, convs 512 wide): transformers builds the model from them before reading any weight,
so a damaged or hostile config.json must not size that allocation."""


def check_hubert_config(path: str) -> None:
    """CheckpointError unless the sizes in HuBERT's ``config.json`` are positive integers within
    :data:`HUBERT_CONFIG_LIMITS` (lists: every entry, at most 16 entries)."""
    from ..errors import CheckpointError

    try:
        if os.path.getsize(path) > 1 << 20:
            raise CheckpointError(f"{path} is larger than 1 MB; a HuBERT config.json is a few KB: re-download it")
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable JSON file ({e}); re-download it") from e
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} is not a JSON object; re-download it")
    for key, limit in HUBERT_CONFIG_LIMITS.items():
        if key not in cfg:
            continue
        value = cfg[key]
        values = value if isinstance(value, list) and len(value) <= 16 else [value]
        if not all(type(v) is int and 0 < v <= limit for v in values):
            raise CheckpointError(f"{path}: {key} = {value!r} is outside what a HuBERT model uses (1..{limit}); "
                                  "the file is damaged: re-download it")


def load_hubert(
    folder: str | os.PathLike, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> HubertEncoder:
    """Load HuBERT from a local folder holding the Hugging Face files of
    facebook/hubert-large-ls960-ft (config.json, preprocessor_config.json, weights). Never
    downloads; the manifest/downloader provides the folder."""
    from transformers import HubertModel

    check_device_dtype(device, dtype)
    folder = os.fspath(folder)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise AssetMissingError(
            f"HuBERT folder '{folder}' has no config.json. Download facebook/hubert-large-ls960-ft "
            "(config.json, preprocessor_config.json, model weights) into it with the model "
            "manager, or point to the folder that holds those files."
        )
    check_hubert_config(os.path.join(folder, "config.json"))
    do_normalize = True
    pre = os.path.join(folder, "preprocessor_config.json")
    if os.path.isfile(pre):
        with open(pre, encoding="utf-8") as f:
            do_normalize = bool(json.load(f).get("do_normalize", True))
    try:
        model = HubertModel.from_pretrained(folder, local_files_only=True)
    except OSError as exc:
        raise AssetMissingError(
            f"HuBERT weights in '{folder}' could not be loaded ({exc}). The folder must hold "
            "model.safetensors or pytorch_model.bin of facebook/hubert-large-ls960-ft."
        ) from exc
    return HubertEncoder(model.to(device=device, dtype=dtype), do_normalize)
