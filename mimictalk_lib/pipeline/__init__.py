"""High-level glue: expression motion + who (identity / personalised renderer) + head pose ->
rendered talking-head frames. Each public function is what one ComfyUI node calls.

Upstream assembles the same inputs in ``inference/real3d_infer.py`` (``prepare_batch_from_inp``,
``get_driving_motion``, ``forward_secc2video``) and ``inference/mimictalk_infer.py`` (its
personalised overrides); architecture reference §1.4-§1.7, §2.7:

* **Who.** A :class:`TalkingSource` holds what every frame shares: canonical planes, identity
  coefficients, source expression/pose, source torso keypoints, inpainted torso, background plate
  and segmentation. One-shot (Real3D-Portrait): planes from the source frame's head image through
  the renderer's canonical backbone. Personalised (MimicTalk): the learned tri-grid and the
  adapter's person data (``person_ds``: id, source frame, source keypoints).
* **Pose.** 'static' (the source pose), 'identity' (the identity clip's poses) or explicit
  euler/trans; ping-pong indexed to the motion length, z-translation frozen to frame 0, and with
  ``map_to_init_pose`` shifted so frame 0 equals the source pose. Cameras: EG3D convention,
  window-7 smoothed. Torso keypoints of the driving frames: clamped to [-1, 1], width-7 smoothed.
* **Expression.** SECC maps: canonical (exp 0) and source (upstream: the first *driving*
  expression; ``src_exp='source'`` uses the source's own) once, driving maps per render chunk,
  with the 'period' eye blinks painted in. Nothing per-frame at 512² is held for the whole clip.

Rendering streams chunks (:func:`iter_talking_head`): the compute device holds one chunk, the
caller decides where frames go (a tensor, :func:`render_to_video`'s mp4 writer). Motion from
audio: :func:`audio_to_motion`.

Modules by flow: :mod:`.motion` (speech -> motion), :mod:`.source` (who is rendered),
:mod:`.render` (session, chunked rendering, video).
"""

from .motion import FPS, TRIM_MODES, UPSTREAM_DROPPED_FRAMES, audio_to_motion, motion_frames_for, style_prompt
from .render import (BLINK_MODES, POSE_MODES, SRC_EXP_MODES, FrameChunk, Pose, TalkingHead, TalkingSession,
                     build_session, iter_talking_head, render_talking_head, render_to_video)
from .source import (MIN_FACE_AREA, TalkingSource, as_personalised, make_source, one_shot_source,
                     personalised_source, renderer_model)

__all__ = [
    "BLINK_MODES", "FPS", "FrameChunk", "MIN_FACE_AREA", "POSE_MODES", "Pose", "SRC_EXP_MODES", "TRIM_MODES",
    "TalkingHead", "TalkingSession", "TalkingSource", "UPSTREAM_DROPPED_FRAMES", "as_personalised", "audio_to_motion", "build_session",
    "iter_talking_head", "make_source", "motion_frames_for", "one_shot_source", "personalised_source",
    "render_talking_head", "render_to_video", "renderer_model", "style_prompt",
]
