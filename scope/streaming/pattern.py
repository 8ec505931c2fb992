"""A moving test pattern with its frame index stamped into the pixels.

Used to check that video comes back unchanged and to measure glass-to-glass latency: the
index survives lossy coding because each bit is a large black or white block.
"""

from __future__ import annotations

import functools
import time

import numpy as np
from av import VideoFrame

from scope.streaming.paced import PacedVideoTrack

BITS = 16
BLOCK = 16  # pixels per bit block; the stamp occupies the top BLOCK rows


@functools.lru_cache(maxsize=4)
def _grids(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width]
    return (xs + ys).astype(np.int32), (2 * xs).astype(np.int32)


def pattern_frame(index: int, width: int = 320, height: int = 240) -> np.ndarray:
    """An RGB frame: a diagonal gradient moving with ``index``, plus the stamped index."""
    diagonal, horizontal = _grids(width, height)
    base = ((diagonal + 4 * index) % 256).astype(np.uint8)
    frame = np.empty((height, width, 3), dtype=np.uint8)
    frame[..., 0] = base
    frame[..., 1] = (horizontal + index) % 256
    frame[..., 2] = 255 - base
    stamp(frame, index)
    return frame


def stamp(frame: np.ndarray, index: int) -> None:
    for bit in range(BITS):
        value = 255 if (index >> bit) & 1 else 0
        frame[:BLOCK, bit * BLOCK : (bit + 1) * BLOCK] = value


def read_index(frame: np.ndarray) -> int:
    """Recover the stamped index (the centre of each block, thresholded)."""
    half = BLOCK // 2
    index = 0
    for bit in range(BITS):
        patch = frame[half - 2 : half + 2, bit * BLOCK + half - 2 : bit * BLOCK + half + 2]
        if patch.mean() > 127:
            index |= 1 << bit
    return index


class PatternTrack(PacedVideoTrack):
    """Sends :func:`pattern_frame` at a fixed rate; remembers when each index was sent."""

    def __init__(self, fps: float = 30.0, width: int = 320, height: int = 240):
        super().__init__(fps)
        self.width, self.height = width, height
        self.sent_at: dict[int, float] = {}

    async def next_frame(self) -> VideoFrame:
        frame = VideoFrame.from_ndarray(pattern_frame(self.index, self.width, self.height), format="rgb24")
        self.sent_at[self.index] = time.monotonic()
        return frame
