"""Live avatar: speech in, a personalised talking head out, in real time (issue 18).

- :mod:`.motion` -- incremental ICS-A2M (:class:`MotionStream`): windows that continue the motion
  already generated;
- :mod:`.idle` -- blinks and a slow head sway that go on while nobody speaks;
- :mod:`.render` -- a few frames at a time through the offline pipeline's session and render loop;
- :mod:`.session` -- one client's real-time loop (audio timeline, worker thread, latency, drops);
- :mod:`.avatar` -- the models a server loads once;
- :mod:`.server` -- ``python -m mimictalk_lib serve`` (aiortc + aiohttp, optional dependencies).
"""

from .idle import IdleMotion
from .motion import MotionStream, StreamSettings

__all__ = ["IdleMotion", "MotionStream", "StreamSettings"]
