"""Scale-out (issue 17): deterministic frame sub-ranges (:mod:`.ranges`, no extra packages) and
rendering long motions / batches of jobs across a Ray cluster (:mod:`.cluster`; ``ray`` is an
optional dependency imported only there, ``pip install "mimictalk[ray]"``)."""

from .ranges import check_range, frame_ranges, iter_frame_range, render_frame_range, session_frames

__all__ = ["check_range", "frame_ranges", "iter_frame_range", "render_frame_range", "session_frames"]
