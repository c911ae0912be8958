"""Frame renderer of a live avatar: motion, pose and blinks of a few frames at a time -> uint8
frames, with the offline pipeline's session assembly (:func:`mimictalk_lib.pipeline.build_session`)
and chunked render loop (:func:`mimictalk_lib.pipeline.iter_talking_head`).

What does not change during a stream (source, canonical and source SECC maps) is made once; each
call builds the per-frame inputs (driving SECC, cameras, torso keypoints) for its frames with a
few frames of history, so the camera and keypoint smoothing windows see the frames before them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch

from ..errors import InputError
from ..face.model import N_EXP
from ..pipeline import TalkingSession, TalkingSource, build_session, iter_talking_head, make_source, renderer_model

HISTORY = 3  # half the 7-frame smoothing window of cameras and keypoints


def _tail(session: TalkingSession, n: int) -> TalkingSession:
    """The last n frames of a session (per-frame fields sliced, shared inputs kept)."""
    cut = slice(session.num_frames - n, None)
    return replace(session, motion=session.motion[cut], camera=session.camera[cut], kp_d=session.kp_d[cut],
                   euler=session.euler[cut], trans=session.trans[cut], blink=session.blink[cut])


class FrameRenderer:
    """Renders frames of one avatar (``renderer`` + ``face_model`` + ``source``: a
    :class:`~mimictalk_lib.pipeline.TalkingSource`, a prepared identity, or None for a
    personalised renderer that carries its person data)."""

    def __init__(self, renderer: Any, face_model: torch.nn.Module, source: Any = None, *, chunk_size: int = 4):
        self.renderer, self.face_model, self.chunk_size = renderer, face_model, chunk_size
        self.source = source if isinstance(source, TalkingSource) else make_source(renderer, source)
        if self.source.src_pose is None:
            raise InputError("a live avatar needs the source head pose: pass the identity the adapter was made from")
        self.src_exp = "source" if self.source.src_exp is not None else "motion"
        first = self.source.src_exp.reshape(1, N_EXP) if self.source.src_exp is not None else torch.zeros(1, N_EXP)
        base = self._session(first, torch.zeros(1, 3), torch.zeros(1, 3))
        self._cano, self._src = base.cano_secc, base.src_secc
        self.face_model = base.face_model  # on the renderer's device from now on
        self.resolution = int(renderer_model(renderer).cfg.image_resolution)
        self._history: Optional[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = None

    def _session(self, motion, d_euler, d_trans) -> TalkingSession:
        euler = self.source.src_pose.euler.reshape(1, 3).float() + d_euler
        trans = self.source.src_pose.trans.reshape(1, 3).float() + d_trans
        return build_session(self.renderer, self.face_model, self.source, motion, pose=(euler, trans),
                             map_to_init_pose=False, blink="none", src_exp=self.src_exp)

    def render(self, motion: torch.Tensor, d_euler: torch.Tensor, d_trans: torch.Tensor,
               closure: torch.Tensor) -> torch.Tensor:
        """motion [n, 64], pose offsets from the source pose [n, 3] + [n, 3], eye closure [n]
        -> uint8 frames [n, R, R, 3] (CPU)."""
        n = motion.shape[0]
        m, e, t = motion.float().cpu(), d_euler.float().cpu(), d_trans.float().cpu()
        if self._history is not None:
            hm, he, ht = self._history
            m, e, t = torch.cat([hm, m]), torch.cat([he, e]), torch.cat([ht, t])
        self._history = (m[-HISTORY:], e[-HISTORY:], t[-HISTORY:])
        session = _tail(self._session(m, e, t), n)
        session = replace(session, cano_secc=self._cano, src_secc=self._src, blink=closure.float().cpu())
        chunks = iter_talking_head(session, chunk_size=self.chunk_size, output_dtype=torch.uint8)
        return torch.cat([c.images for c in chunks])

    def skip(self, motion: torch.Tensor, d_euler: torch.Tensor, d_trans: torch.Tensor) -> None:
        """Frames dropped under load: not rendered, but remembered as smoothing history."""
        self._history = (motion[-HISTORY:].float().cpu(), d_euler[-HISTORY:].float(), d_trans[-HISTORY:].float())
