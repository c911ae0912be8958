"""``python -m mimictalk_lib serve``: a local live-avatar server.

One process serves a small web page and WebRTC (aiortc): the page sends the microphone (or
nothing) and receives the avatar's video and the speech back; speech can also be POSTed as an
audio file (e.g. from a TTS engine) or given as a file at start. Each WebRTC connection is one
session (:class:`~mimictalk_lib.live.session.LiveSession`), up to ``--max-sessions``; further
offers get HTTP 503 with the reason. A session ends when its peer disconnects or calls
``DELETE /session/<id>``.

HTTP API (JSON):

- ``GET /``: the page (``?mic=0``: no microphone, receive only);
- ``POST /offer`` ``{"sdp", "type"}`` -> ``{"sdp", "type", "session"}``;
- ``POST /speech/<id>`` (body: an audio file, any rate/format FFmpeg reads; ``/speech`` alone
  when one session runs) -> ``{"session", "seconds", "starts_in_s"}``;
- ``GET /stats/<id>``: latency, frame rate, frames rendered / sent / dropped, errors;
- ``GET /status``: sessions in use and the bound;
- ``DELETE /session/<id>``.

aiortc and aiohttp are optional dependencies (``pip install "mimictalk[live]"``), imported when
the server starts. The server binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import itertools
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import DependencyMissingError, InputError, MimicTalkError
from ..utils import logger
from .session import RATE, LiveSession, speech_from_bytes

VIDEO_CLOCK = 90_000  # RTP video clock (Hz)
FPS = 25
AUDIO_BLOCK = 320  # 20 ms at 16 kHz
MAX_UPLOAD = 32 * 1024 * 1024  # bytes of a posted audio file
CONNECT_TIMEOUT_S = 30.0  # a session whose peer never connects is closed
INSTALL_HINT = 'pip install "aiortc>=1.9" "aiohttp>=3.9"  (or: pip install "mimictalk[live]")'


def import_webrtc():
    """(aiortc, aiohttp.web, av) or DependencyMissingError saying how to install them."""
    try:
        import aiortc
        import av
        from aiohttp import web
    except ImportError as e:
        raise DependencyMissingError(
            f"the live server needs the optional packages aiortc and aiohttp ({e.name} is missing): {INSTALL_HINT}"
        ) from e
    return aiortc, web, av


def page_html() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


def _tracks(aiortc, av):
    """The two outgoing track classes (defined once aiortc is imported)."""
    from aiortc.mediastreams import MediaStreamError

    class AvatarAudioTrack(aiortc.MediaStreamTrack):
        """The speech of the frames sent so far, paced in 20 ms blocks (silence when none)."""

        kind = "audio"

        def __init__(self, max_seconds: float = 0.6):
            super().__init__()
            self._buf: list[np.ndarray] = []
            self._queued = 0
            self._max = int(max_seconds * RATE)
            self._start: Optional[float] = None
            self._n = 0

        def feed(self, samples: np.ndarray) -> None:
            self._buf.append(samples)
            self._queued += len(samples)
            while self._queued > self._max and self._buf:  # a stalled consumer drops the oldest
                self._queued -= len(self._buf.pop(0))

        def _take(self, n: int) -> np.ndarray:
            out, got = np.zeros(n, dtype=np.float32), 0
            while got < n and self._buf:
                head = self._buf[0]
                k = min(n - got, len(head))
                out[got: got + k] = head[:k]
                got += k
                if k == len(head):
                    self._buf.pop(0)
                else:
                    self._buf[0] = head[k:]
            self._queued -= got
            return out

        async def recv(self):
            if self.readyState != "live":
                raise MediaStreamError
            now = time.monotonic()
            if self._start is None:
                self._start = now
            wait = self._start + self._n * AUDIO_BLOCK / RATE - now
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.2:  # the event loop stalled: restart the clock instead of bursting
                self._start, self._n = now, 0
            pcm = (self._take(AUDIO_BLOCK).clip(-1, 1) * 32767).astype(np.int16)
            frame = av.AudioFrame.from_ndarray(pcm[None], format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = RATE, self._n * AUDIO_BLOCK, fractions.Fraction(1, RATE)
            self._n += 1
            return frame

    class AvatarVideoTrack(aiortc.MediaStreamTrack):
        """Frames of a session as they are produced, at most 25 per second, stamped with their
        stream frame number (a dropped frame leaves a gap in the timestamps)."""

        kind = "video"

        def __init__(self, session: LiveSession, audio: AvatarAudioTrack):
            super().__init__()
            self.session, self.audio = session, audio
            self._last_sent = 0.0

        async def recv(self):
            while True:
                if self.readyState != "live" or self.session.closed:
                    raise MediaStreamError
                gap = self._last_sent + 1 / FPS - time.monotonic()
                if gap > 0:
                    await asyncio.sleep(gap)
                frame = self.session.take_frame()
                if frame is not None:
                    break
                await asyncio.sleep(0.005)
            self._last_sent = time.monotonic()
            self.audio.feed(frame.audio)
            out = av.VideoFrame.from_ndarray(frame.image, format="rgb24")
            out.pts, out.time_base = frame.index * (VIDEO_CLOCK // FPS), fractions.Fraction(1, VIDEO_CLOCK)
            return out

    return AvatarAudioTrack, AvatarVideoTrack


class LiveServer:
    """The sessions of one avatar behind the HTTP/WebRTC routes."""

    def __init__(self, avatar, *, max_sessions: int = 2, speech_file: Optional[str] = None):
        self.aiortc, self.web, self.av = import_webrtc()
        if max_sessions < 1:
            raise InputError(f"max_sessions must be at least 1, got {max_sessions}")
        self.avatar, self.max_sessions = avatar, max_sessions
        self.speech = speech_from_bytes(Path(speech_file).read_bytes(), Path(speech_file).suffix) if speech_file else None
        self.sessions: dict[str, tuple[LiveSession, Any]] = {}  # id -> (session, peer connection)
        self._ids = itertools.count(1)
        self._Audio, self._Video = _tracks(self.aiortc, self.av)

    def app(self):
        web = self.web
        app = web.Application(client_max_size=MAX_UPLOAD)
        app.add_routes([
            web.get("/", self.index), web.post("/offer", self.offer), web.post("/speech", self.speech_post),
            web.post("/speech/{sid}", self.speech_post), web.get("/stats/{sid}", self.stats),
            web.get("/status", self.status), web.delete("/session/{sid}", self.delete),
        ])
        app.on_shutdown.append(self._shutdown)
        return app

    def _json_error(self, status: int, message: str):
        return self.web.json_response({"error": message}, status=status)

    async def index(self, request):
        return self.web.Response(text=page_html(), content_type="text/html")

    async def status(self, request):
        return self.web.json_response({"sessions": len(self.sessions), "max_sessions": self.max_sessions,
                                       "ids": sorted(self.sessions)})

    def _session(self, request):
        sid = request.match_info.get("sid")
        if sid is None and len(self.sessions) == 1:
            sid = next(iter(self.sessions))
        if sid not in self.sessions:
            raise self.web.HTTPNotFound(text=f'{{"error": "no live session {sid!r}; running: {sorted(self.sessions)}"}}',
                                        content_type="application/json")
        return sid, self.sessions[sid][0]

    async def offer(self, request):
        if len(self.sessions) >= self.max_sessions:
            return self._json_error(503, f"the live server is full: {len(self.sessions)} of {self.max_sessions} sessions "
                                         "are in use. Try again when one ends, or start the server with a larger "
                                         "--max-sessions.")
        try:
            params = await request.json()
            desc = self.aiortc.RTCSessionDescription(sdp=params["sdp"], type=params["type"])
        except (ValueError, KeyError, TypeError) as e:
            return self._json_error(400, f"an offer is JSON {{'sdp': ..., 'type': 'offer'}} ({e})")
        sid = f"s{next(self._ids)}"
        loop = asyncio.get_running_loop()
        session = await loop.run_in_executor(None, lambda: self.avatar.session(seed=int(sid[1:]), name=sid))
        pc = self.aiortc.RTCPeerConnection()
        self.sessions[sid] = (session, pc)
        audio_out = self._Audio()

        @pc.on("connectionstatechange")
        async def _state():
            logger.info("live session %s: connection %s", sid, pc.connectionState)
            if pc.connectionState in ("failed", "closed", "disconnected"):
                await self._close(sid)

        @pc.on("track")
        def _track(track):
            if track.kind == "audio":
                asyncio.ensure_future(self._microphone(track, session))

        try:
            await pc.setRemoteDescription(desc)
            pc.addTrack(audio_out)
            pc.addTrack(self._Video(session, audio_out))
            await pc.setLocalDescription(await pc.createAnswer())
        except (ValueError, self.aiortc.exceptions.InvalidStateError) as e:
            await self._close(sid)
            return self._json_error(400, f"the WebRTC offer could not be answered: {e}")
        session.start()
        if self.speech is not None:
            session.timeline.write(self.speech)
        asyncio.ensure_future(self._watch(sid, pc))
        logger.info("live session %s started (%d of %d)", sid, len(self.sessions), self.max_sessions)
        return self.web.json_response({"sdp": pc.localDescription.sdp, "type": pc.localDescription.type, "session": sid})

    async def _watch(self, sid: str, pc) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT_S)
        if sid in self.sessions and pc.connectionState != "connected":
            logger.info("live session %s: the peer never connected; closing", sid)
            await self._close(sid)

    async def _microphone(self, track, session: LiveSession) -> None:
        """Feed a WebRTC audio track (any rate / layout) into the session at the clock."""
        from aiortc.mediastreams import MediaStreamError

        resampler = self.av.AudioResampler(format="flt", layout="mono", rate=RATE)
        while not session.closed:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            for f in resampler.resample(frame):
                session.timeline.write(f.to_ndarray().reshape(-1), at_clock=True)

    async def speech_post(self, request):
        sid, session = self._session(request)
        data = await request.read()
        suffix = Path(request.query.get("name", "speech.wav")).suffix or ".wav"
        loop = asyncio.get_running_loop()
        try:
            wav = await loop.run_in_executor(None, speech_from_bytes, data, suffix)
            start = session.timeline.write(wav)
        except InputError as e:
            return self._json_error(422, f"speech not used ({e}); the stream goes on")
        return self.web.json_response({"session": sid, "seconds": round(len(wav) / RATE, 3),
                                       "starts_in_s": round(max(0.0, start / RATE - session.clock()), 3)})

    async def stats(self, request):
        sid, session = self._session(request)
        return self.web.json_response({"session": sid, **session.summary(), "sessions": len(self.sessions),
                                       "max_sessions": self.max_sessions})

    async def delete(self, request):
        sid, _ = self._session(request)
        await self._close(sid)
        return self.web.json_response({"closed": sid})

    async def _close(self, sid: str) -> None:
        entry = self.sessions.pop(sid, None)
        if entry is None:
            return
        session, pc = entry
        await asyncio.get_running_loop().run_in_executor(None, session.close)
        await pc.close()
        logger.info("live session %s closed (%d of %d in use)", sid, len(self.sessions), self.max_sessions)

    async def _shutdown(self, app) -> None:
        for sid in list(self.sessions):
            await self._close(sid)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mimictalk_lib serve",
        description="Serve a live talking head: a web page + WebRTC; speech from the browser's microphone, "
                    "POST /speech (an audio file), or --speech; video and the speech come back.")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--adapter", help="a personalised adapter (.safetensors; a path or a name under the models dir)")
    who.add_argument("--portrait", help="a portrait photo (one-shot; needs mediapipe)")
    p.add_argument("--models-dir", default=None, help="the mimictalk model folder (default $MIMICTALK_MODELS_DIR or ./models/mimictalk)")
    p.add_argument("--renderer", help="renderer weights (default mimictalk_base_renderer / real3dportrait_renderer)")
    p.add_argument("--a2m", help="audio-to-motion weights (default ics_a2m)")
    p.add_argument("--hubert", help="HuBERT weights (default hubert_large)")
    p.add_argument("--bfm", help="Basel Face Model folder (default bfm)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda or cuda:1 (default cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="model precision (default fp32; bf16 / fp16 on a GPU only)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 = any free port)")
    p.add_argument("--max-sessions", type=int, default=2, help="clients served at once (default 2); more get HTTP 503")
    p.add_argument("--speech", help="an audio file every new session speaks first")
    p.add_argument("--steps", type=int, help="ODE grid points per motion window (default 6)")
    p.add_argument("--hop", type=int, help="motion frames per step (default 5 = 200 ms)")
    p.add_argument("--pitch", choices=("auto", "praat", "pyin", "off"), default="auto",
                   help="f0 tracker for the motion model's pitch input (auto: praat when installed, else off)")
    p.add_argument("--max-lag", type=float, default=0.5, help="seconds behind real time before frames are dropped")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import dataclasses
    import os

    import torch

    from .avatar import load_avatar
    from .motion import StreamSettings

    args = _parser().parse_args(argv)
    _, web, _ = import_webrtc()
    models = args.models_dir or os.environ.get("MIMICTALK_MODELS_DIR") or "models/mimictalk"
    settings = StreamSettings()
    for name in ("steps", "hop"):
        if getattr(args, name) is not None:
            settings = dataclasses.replace(settings, **{name: getattr(args, name)})
    from .. import __main__ as cli

    cli.logging_to_stderr()
    try:
        avatar = load_avatar(models_dir=models, adapter=args.adapter, portrait=args.portrait, renderer=args.renderer,
                             a2m=args.a2m, hubert=args.hubert, bfm=args.bfm, device=torch.device(args.device),
                             dtype={"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.dtype],
                             settings=settings, pitch=args.pitch, max_lag=args.max_lag)
        server = LiveServer(avatar, max_sessions=args.max_sessions, speech_file=args.speech)
        warm = avatar.session(name="warm-up")  # first-call costs (JIT, allocations) before anyone waits
        warm.step(np.zeros(settings.hop * 640 * 2, dtype=np.float32))
    except MimicTalkError as e:
        print(str(e), file=sys.stderr)
        return 1

    async def run() -> None:
        runner = web.AppRunner(server.app())
        await runner.setup()
        site = web.TCPSite(runner, args.host, args.port)
        await site.start()
        port = runner.addresses[0][1]
        print(f"live avatar: http://{args.host}:{port}/", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
