"""Media tracks of a session: the paced output track and the input frame buffer."""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from aiortc import MediaStreamTrack
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

logger = logging.getLogger(__name__)

VIDEO_CLOCK_RATE = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
MIN_FPS, MAX_FPS, DEFAULT_FPS = 1.0, 60.0, 30.0
INPUT_BUFFER_FRAMES = 30
#: Playback speed-up (period factor) while more than one chunk is queued.
DRAIN_FACTOR = 0.95
FPS_WINDOW = 30
FPS_REFRESH_S = 0.5
#: Frames sent over which the input-to-output latency is reported.
LATENCY_WINDOW = 30


def clamp_fps(value: float) -> float:
    return max(MIN_FPS, min(MAX_FPS, value))


class RateMeter:
    """Frames per second from the arrival times of the last ``window`` frames.

    Recomputed at most every ``refresh`` seconds so pacing does not chase noise.
    """

    def __init__(self, window: int = FPS_WINDOW, min_samples: int = 5, refresh: float = FPS_REFRESH_S):
        self._times: collections.deque[float] = collections.deque(maxlen=window)
        self._min_samples = min_samples
        self._refresh = refresh
        self._value: float | None = None
        self._computed_at = 0.0

    def tick(self, now: float | None = None, count: int = 1) -> None:
        now = time.monotonic() if now is None else now
        for _ in range(count):
            self._times.append(now)

    @property
    def fps(self) -> float | None:
        now = time.monotonic()
        if now - self._computed_at >= self._refresh and len(self._times) >= self._min_samples:
            span = self._times[-1] - self._times[0]
            if span > 0:
                self._value = clamp_fps((len(self._times) - 1) / span)
            self._computed_at = now
        return self._value

    def reset(self) -> None:
        self._times.clear()
        self._value = None


class ChunkRateMeter:
    """Pipeline speed: output frames per second over the last two chunks."""

    def __init__(self, chunks: int = 2, refresh: float = FPS_REFRESH_S):
        self._chunks: collections.deque[tuple[float, int]] = collections.deque(maxlen=chunks)
        self._refresh = refresh
        self._value = DEFAULT_FPS
        self._computed_at = 0.0

    def record(self, seconds: float, frames: int) -> None:
        self._chunks.append((seconds, frames))

    @property
    def fps(self) -> float:
        now = time.monotonic()
        if now - self._computed_at >= self._refresh and self._chunks:
            seconds = sum(s for s, _ in self._chunks)
            frames = sum(f for _, f in self._chunks)
            if seconds > 0 and frames > 0:
                self._value = clamp_fps(frames / seconds)
            self._computed_at = now
        return self._value


@dataclass(frozen=True)
class TakenInput:
    """The frames a chunk takes, oldest first, with when each arrived (``time.monotonic()``)."""

    frames: np.ndarray
    arrived: tuple[float, ...]


def even_indices(length: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``range(length)``, the last one ``length - 1``."""
    if count == 1:
        return [length - 1]
    return [int(i) for i in np.rint(np.linspace(0, length - 1, count))]


class InputBuffer:
    """The newest input frames of a session (a ring of 30), each with its arrival time.

    :meth:`take` samples everything buffered evenly, always ending at the newest frame, and
    empties the ring: what it passed over is older than the chunk's input, so it is dropped and
    no backlog can build up behind it. ``received == used + dropped + len(self)`` at all times.
    """

    def __init__(self, capacity: int = INPUT_BUFFER_FRAMES):
        self._frames: collections.deque[tuple[np.ndarray, float]] = collections.deque(maxlen=capacity)
        self.meter = RateMeter()
        self._arrived = asyncio.Event()
        #: Frames put, frames a chunk took, frames that left unused (pushed out, passed over, cleared).
        self.received = 0
        self.used = 0
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: np.ndarray, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1  # the oldest frame is pushed out of the ring unused
        self._frames.append((frame, now))
        self.received += 1
        self.meter.tick(now)
        self._arrived.set()

    def skip(self) -> None:
        """Count a frame the peer sent that could not be used (undecodable): received, dropped."""
        self.received += 1
        self.dropped += 1
        self.meter.tick()

    def clear(self) -> None:
        self.dropped += len(self._frames)
        self._frames.clear()

    async def wait_for(self, count: int, timeout: float | None = None) -> bool:
        """Wait until at least ``count`` frames are buffered (False on timeout)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self._frames) < count:
            self._arrived.clear()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return False
        return True

    def take(self, count: int) -> TakenInput:
        """``count`` frames sampled evenly over the buffer, ending at the newest; empties it."""
        length = len(self._frames)
        if count < 1 or length < count:
            raise ValueError(f"need {count} frames, have {length}")
        taken = [self._frames[i] for i in even_indices(length, count)]
        self._frames.clear()
        newest_shape = taken[-1][0].shape
        # A client that changed resolution mid-chunk: keep the newest size, repeat its oldest frame.
        taken = [item for item in taken if item[0].shape == newest_shape]
        self.used += len(taken)
        self.dropped += length - len(taken)
        taken = [taken[0]] * (count - len(taken)) + taken
        return TakenInput(np.stack([frame for frame, _ in taken]), tuple(at for _, at in taken))


class LatencyWindow:
    """Input-to-output latency of the last ``window`` frames sent (None for frames made without input)."""

    def __init__(self, window: int = LATENCY_WINDOW):
        self._values: collections.deque[float | None] = collections.deque(maxlen=window)

    def __len__(self) -> int:
        return len(self._values)

    def record(self, seconds: float | None) -> None:
        self._values.append(seconds)

    def percentile_ms(self, q: float) -> float | None:
        """The ``q``-th percentile in milliseconds, or None when no frame in the window had an input."""
        values = [v for v in self._values if v is not None]
        return round(float(np.percentile(values, q)) * 1000.0, 2) if values else None


class OutputTrack(MediaStreamTrack):
    """The session's outgoing video, paced to ``rate()`` frames per second.

    Frames pushed by the generation loop wait in a short queue. When the queue is empty and the
    track is holding (paused, loading), the last frame is repeated; otherwise ``recv`` waits for
    the next frame. A ``frozen`` track (paused) repeats the last frame at once and keeps the
    queue for when it thaws, so a pause freezes the picture the viewer sees, not a chunk later.
    Timestamps follow the wall clock on a 90 kHz clock. Each queued frame may carry the arrival
    time of the input frame it was made from; sending it records the input-to-output latency.
    """

    kind = "video"

    def __init__(self, rate: Callable[[], float], capacity: int = 8):
        super().__init__()
        self._rate = rate
        self._queue: collections.deque[tuple[np.ndarray, float | None]] = collections.deque()
        self._capacity = capacity
        self._available = asyncio.Event()
        self._taken = asyncio.Event()
        self._last: np.ndarray | None = None
        self._due: float | None = None
        self._chunk_frames = capacity
        self._start: float | None = None
        self.hold = False
        self.frozen = False
        self.sent = RateMeter(min_samples=2)
        self.frames_sent = 0
        self.frames_dropped = 0
        self.latency = LatencyWindow()

    def grow(self, frames_per_chunk: int) -> None:
        """Make room for three chunks (never shrinks)."""
        self._chunk_frames = frames_per_chunk
        self._capacity = max(self._capacity, 3 * frames_per_chunk)

    def push(self, frames: np.ndarray, origins: Sequence[float | None] | None = None) -> None:
        """Queue a chunk's frames, each with the arrival time of its input frame (``origins``;
        None for frames made without input). Refuses (ValueError) anything but uint8
        ``(T, H, W, 3)`` RGB, which the encoder would otherwise choke on later, out of the
        session's sight."""
        shape = getattr(frames, "shape", None)
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or shape[-1] != 3 or 0 in shape[1:3]:
            described = f"{frames.dtype} {shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise ValueError(f"a chunk's frames must be uint8 (T, H, W, 3) RGB, got {described}")
        if origins is None:
            origins = [None] * len(frames)
        elif len(origins) != len(frames):
            raise ValueError(f"{len(origins)} origins for {len(frames)} frames")
        for array, origin in zip(frames, origins):
            if len(self._queue) >= self._capacity:
                self._queue.popleft()  # drop the stalest frame: latency stays bounded
                self.frames_dropped += 1
            self._queue.append((array, origin))
        self._available.set()

    def flush(self) -> None:
        """Drop every queued frame (they were made before a reset or a mode switch)."""
        self._queue.clear()
        self._taken.set()

    async def wait_for_room(self, ahead: int, timeout: float) -> None:
        """Wait until at most ``ahead`` frames are queued: generation runs just ahead of playback."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self._queue) > ahead and self.readyState == "live":
            self._taken.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                return
            try:
                await asyncio.wait_for(self._taken.wait(), remaining)
            except TimeoutError:
                return

    def wake(self) -> None:
        """Re-check the hold state (called when the session's state changes)."""
        self._available.set()

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def recv(self) -> VideoFrame:
        """The next frame for aiortc's encoder, paced (see :meth:`next_array`)."""
        array, pts = await self.next_array()
        frame = VideoFrame.from_ndarray(array, format="rgb24")
        frame.pts = pts
        frame.time_base = VIDEO_TIME_BASE
        return frame

    async def next_array(self) -> tuple[np.ndarray, int]:
        """The next frame, when it is due, as uint8 RGB with its 90 kHz timestamp.

        Every transport takes its frames here, so pacing, holding and latency are the same
        whatever carries them.
        """
        if self.readyState != "live":
            raise MediaStreamError
        period = 1.0 / clamp_fps(self._rate())
        if len(self._queue) > self._chunk_frames:
            period *= DRAIN_FACTOR  # latency built up: play slightly faster until it is gone
        if self._due is not None:
            delay = self._due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        fresh, origin = False, None  # a repeated frame is no new output: it records no latency
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self.frozen and self._last is not None:
                array = self._last
                break
            if self._queue:
                array, origin = self._queue.popleft()
                self._taken.set()
                fresh = True
                break
            if self.hold and self._last is not None:
                array = self._last
                break
            self._available.clear()
            try:
                await asyncio.wait_for(self._available.wait(), timeout=period)
            except TimeoutError:
                pass
        now = time.monotonic()
        if self._start is None:
            self._start = now
        pts = int((now - self._start) * VIDEO_CLOCK_RATE)
        # Deadlines are absolute, so timer slack does not add up. A frame that came clearly late
        # moves the timeline (no burst to catch up); the drain above wins the time back.
        if self._due is None or now - self._due > period / 2:
            self._due = now + period
        else:
            self._due += period
        self._last = array
        self.frames_sent += 1
        self.sent.tick(now)
        if fresh:
            self.latency.record(None if origin is None else now - origin)
        return array, pts
