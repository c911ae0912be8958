"""Identity preparation: from a user's clip or photo to everything adaptation and rendering need
(architecture reference §5; upstream ``data_gen/utils``).

Typical use::

    device = torch.device("cpu")                          # or the accelerator to fit on
    backends = PrepareBackends(landmarker="face_landmarker.task",
                               segmenter="selfie_multiclass_256x256.tflite", face_model="BFM/")
    identity = prepare_identity("me.mp4", backends, PrepareOptions(device=device),
                                output="me.identity.safetensors")
    # the same as keywords: prepare_identity("me.mp4", landmarker=..., segmenter=..., face_model=...,
    #                                        device=device, output=...)
    identity = Identity.load("me.identity.safetensors")
    sheet = contact_sheet(identity)                       # [1, 512, 1024, 3] float preview
    photo = prepare_photo_identity("portrait.png", backends)
    coeffs = identity.coefficients                        # id / exp / euler / trans (face.Coefficients)
    style = style_prompt_from_clip("style.mp4", landmarker=..., face_model=..., hubert=hubert)

Backends are small protocols (``Landmarker.detect``, ``Segmenter.segment``); the MediaPipe ones
are built from model paths and import mediapipe lazily.
"""

from .background import background_plate, nearest_seed
from .checks import MAX_BAD_FRACTION
from .clip import Clip, load_clip, track
from .fit3dmm import IMAGE_WEIGHTS, VIDEO_WEIGHTS, FitResult, FitSchedule, FitWeights, fit_clip, fit_images
from .frames import CropBox, choose_crop, crop_frames, resample_indices, to_uint8_frames
from .identity import FORMAT_VERSION, Identity
from .landmarks import Landmarker, LandmarkResult, MediaPipeLandmarker
from .prepare import PrepareBackends, PrepareOptions, lip_rects, prepare_identity, prepare_photo_identity
from .preview import contact_sheet
from .segmentation import MediaPipeSegmenter, Segmenter, com_images, head_images
from .style import style_prompt_from_clip, style_prompt_from_identity
from .torso import inpaint_torso

__all__ = [
    "Clip", "CropBox", "FORMAT_VERSION", "FitResult", "FitSchedule", "FitWeights", "IMAGE_WEIGHTS",
    "Identity", "LandmarkResult", "Landmarker", "MAX_BAD_FRACTION", "MediaPipeLandmarker",
    "MediaPipeSegmenter", "PrepareBackends", "PrepareOptions", "Segmenter", "VIDEO_WEIGHTS", "background_plate",
    "choose_crop",
    "com_images", "contact_sheet", "crop_frames", "fit_clip", "fit_images", "head_images",
    "inpaint_torso", "lip_rects", "load_clip", "nearest_seed", "prepare_identity",
    "prepare_photo_identity", "resample_indices", "style_prompt_from_clip",
    "style_prompt_from_identity", "to_uint8_frames", "track",
]
