"""Media tracks of a session: the paced output track and the input frame buffer."""

from __future__ import annotations

import asyncio
import collections
import fractions
import logging
import time
from collections.abc import Callable

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


class InputBuffer:
    """The newest input frames of a session (a ring buffer of 30).

    When the pipeline is slower than the camera, :meth:`take` samples the buffer evenly and
    drops what it passed over, so latency stays bounded instead of queueing up.
    """

    def __init__(self, capacity: int = INPUT_BUFFER_FRAMES):
        self._frames: collections.deque[np.ndarray] = collections.deque(maxlen=capacity)
        self.meter = RateMeter()
        self._arrived = asyncio.Event()

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: np.ndarray) -> None:
        self._frames.append(frame)
        self.meter.tick()
        self._arrived.set()

    def clear(self) -> None:
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

    def take(self, count: int) -> np.ndarray:
        """Sample ``count`` frames evenly from the buffer and drop through the last one taken."""
        length = len(self._frames)
        if length < count:
            raise ValueError(f"need {count} frames, have {length}")
        indices = [round(i * length / count) for i in range(count)]
        frames = [self._frames[i] for i in indices]
        for _ in range(indices[-1] + 1):
            self._frames.popleft()
        if len({f.shape for f in frames}) > 1:  # the client changed resolution mid-chunk
            frames = [f for f in frames if f.shape == frames[-1].shape]
            while len(frames) < count:
                frames.insert(0, frames[0])
        return np.stack(frames)


class OutputTrack(MediaStreamTrack):
    """The session's outgoing video, paced to ``rate()`` frames per second.

    Frames pushed by the generation loop wait in a short queue. When the queue is empty and the
    track is holding (paused, loading), the last frame is repeated; otherwise ``recv`` waits for
    the next frame. A ``frozen`` track (paused) repeats the last frame at once and keeps the
    queue for when it thaws, so a pause freezes the picture the viewer sees, not a chunk later.
    Timestamps follow the wall clock on a 90 kHz clock.
    """

    kind = "video"

    def __init__(self, rate: Callable[[], float], capacity: int = 8):
        super().__init__()
        self._rate = rate
        self._queue: collections.deque[np.ndarray] = collections.deque()
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

    def grow(self, frames_per_chunk: int) -> None:
        """Make room for three chunks (never shrinks)."""
        self._chunk_frames = frames_per_chunk
        self._capacity = max(self._capacity, 3 * frames_per_chunk)

    def push(self, frames: np.ndarray) -> None:
        """Queue a chunk's frames. Refuses (ValueError) anything but uint8 ``(T, H, W, 3)`` RGB,
        which the encoder would otherwise choke on later, out of the session's sight."""
        shape = getattr(frames, "shape", None)
        if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or shape[-1] != 3 or 0 in shape[1:3]:
            described = f"{frames.dtype} {shape}" if isinstance(frames, np.ndarray) else type(frames).__name__
            raise ValueError(f"a chunk's frames must be uint8 (T, H, W, 3) RGB, got {described}")
        for array in frames:
            if len(self._queue) >= self._capacity:
                self._queue.popleft()  # drop the stalest frame: latency stays bounded
                self.frames_dropped += 1
            self._queue.append(array)
        self._available.set()

    def flush(self) -> None:
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
        if self.readyState != "live":
            raise MediaStreamError
        period = 1.0 / clamp_fps(self._rate())
        if len(self._queue) > self._chunk_frames:
            period *= DRAIN_FACTOR  # latency built up: play slightly faster until it is gone
        if self._due is not None:
            delay = self._due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        while True:
            if self.readyState != "live":
                raise MediaStreamError
            if self.frozen and self._last is not None:
                array = self._last
                break
            if self._queue:
                array = self._queue.popleft()
                self._taken.set()
                break
            if self.hold and self._last is not None:
                array = self._last
                break
            self._available.clear()
            try:
                await asyncio.wait_for(self._available.wait(), timeout=period)
            except TimeoutError:
                pass
        frame = VideoFrame.from_ndarray(array, format="rgb24")
        now = time.monotonic()
        if self._start is None:
            self._start = now
        frame.pts = int((now - self._start) * VIDEO_CLOCK_RATE)
        frame.time_base = VIDEO_TIME_BASE
        # Deadlines are absolute, so timer slack does not add up. A frame that came clearly late
        # moves the timeline (no burst to catch up); the drain above wins the time back.
        if self._due is None or now - self._due > period / 2:
            self._due = now + period
        else:
            self._due += period
        self._last = array
        self.frames_sent += 1
        self.sent.tick(now)
        return frame
