"""ICS-A2M: speech -> 64-d BFM expression motion at 25 fps, imitating a style prompt
(MimicTalk, NeurIPS 2024, in-context stylised audio-to-motion).

Typical use::

    hubert = load_hubert(hubert_folder, device, dtype)
    a2m = load_a2m(checkpoint_folder, device, dtype)      # or build_a2m(state_dict['model'], ...)
    feats = extract_audio_features("speech.wav", hubert, with_f0=a2m.cfg.use_aux_features)
    style = StylePrompt.from_clip(extract_audio_features(clip_audio, hubert), clip_expressions)
    motion = sample_motion(a2m, feats, style, generator=torch.Generator().manual_seed(0))
"""

from .audio import SAMPLE_RATE, load_audio
from .config import A2MConfig, infer_a2m_config
from .features import AudioFeatures, extract_audio_features
from .hubert import HubertEncoder, hubert_large_config, load_hubert, num_hubert_frames
from .network import InContextAudio2MotionModel, build_a2m, load_a2m
from .ode import integrate
from .pitch import extract_f0, f0_to_coarse
from .prompt import StylePrompt
from .sampler import (
    DEFAULT_CFG_SCALE,
    DEFAULT_STEPS,
    DEFAULT_TEMPERATURE,
    continue_motion,
    plan_windows,
    sample_motion,
)

__all__ = [
    "A2MConfig", "AudioFeatures", "DEFAULT_CFG_SCALE", "DEFAULT_STEPS", "DEFAULT_TEMPERATURE",
    "HubertEncoder", "InContextAudio2MotionModel", "SAMPLE_RATE", "StylePrompt", "build_a2m", "continue_motion",
    "extract_audio_features", "extract_f0", "f0_to_coarse", "hubert_large_config",
    "infer_a2m_config", "integrate", "load_a2m", "load_audio", "load_hubert", "num_hubert_frames",
    "plan_windows", "sample_motion",
]
