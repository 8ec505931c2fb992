"""The input ring and the output track's latency window, without a server."""

from __future__ import annotations

import random
import time

import numpy as np
import pytest

from scope.streaming.session import origins_of
from scope.streaming.tracks import InputBuffer, OutputTrack


def frame(value: int, size: int = 4) -> np.ndarray:
    return np.full((size, size, 3), value % 256, np.uint8)


def values(frames: np.ndarray) -> list[int]:
    return [int(f[0, 0, 0]) for f in frames]


def balanced(buffer: InputBuffer) -> bool:
    return buffer.received == buffer.used + buffer.dropped + len(buffer)


def test_take_samples_evenly_and_ends_at_the_newest_frame():
    buffer = InputBuffer()
    for i in range(30):
        buffer.put(frame(i), now=100.0 + i)
    taken = buffer.take(4)
    assert values(taken.frames) == [0, 10, 19, 29]
    assert taken.arrived == (100.0, 110.0, 119.0, 129.0)
    assert len(buffer) == 0, "what the chunk passed over is gone"
    assert (buffer.received, buffer.used, buffer.dropped) == (30, 4, 26)


def test_a_buffer_holding_just_enough_is_taken_whole():
    buffer = InputBuffer()
    for i in range(4):
        buffer.put(frame(i))
    assert values(buffer.take(4).frames) == [0, 1, 2, 3]
    assert (buffer.received, buffer.used, buffer.dropped) == (4, 4, 0)
    with pytest.raises(ValueError, match="need 4 frames, have 0"):
        buffer.take(4)


def test_overflow_and_clear_count_as_dropped():
    buffer = InputBuffer(capacity=30)
    for i in range(45):
        buffer.put(frame(i))
    assert len(buffer) == 30 and buffer.dropped == 15 and balanced(buffer)
    taken = buffer.take(2)
    assert values(taken.frames) == [15, 44]
    assert (buffer.received, buffer.used, buffer.dropped) == (45, 2, 43)
    for i in range(5):
        buffer.put(frame(i))
    buffer.clear()
    assert len(buffer) == 0 and buffer.dropped == 48 and balanced(buffer)


def test_the_counters_balance_through_any_sequence_and_each_take_ends_at_the_newest():
    rng = random.Random(7)
    buffer = InputBuffer(capacity=30)
    newest = -1
    for _ in range(2000):
        action = rng.random()
        if action < 0.8:
            newest += 1
            buffer.put(frame(newest))
        elif action < 0.97:
            count = rng.randint(1, 8)
            if len(buffer) >= count:
                taken = values(buffer.take(count).frames)
                assert taken[-1] == newest % 256 and len(taken) == count
        else:
            buffer.clear()
        assert balanced(buffer) and len(buffer) <= 30


def test_a_resolution_change_keeps_the_newest_size():
    buffer = InputBuffer()
    buffer.put(frame(1, size=4), now=1.0)
    buffer.put(frame(2, size=8), now=2.0)
    buffer.put(frame(3, size=8), now=3.0)
    taken = buffer.take(3)
    assert taken.frames.shape == (3, 8, 8, 3) and values(taken.frames) == [2, 2, 3]
    assert taken.arrived == (2.0, 2.0, 3.0)
    assert (buffer.used, buffer.dropped) == (2, 1)


def test_output_frames_map_onto_their_inputs_in_order():
    assert origins_of(4, (1.0, 2.0, 3.0, 4.0)) == [1.0, 2.0, 3.0, 4.0]
    assert origins_of(5, (1.0, 2.0, 3.0, 4.0)) == [1.0, 2.0, 3.0, 3.0, 4.0]
    assert origins_of(8, (1.0, 2.0)) == [1.0] * 4 + [2.0] * 4
    assert origins_of(1, (1.0, 2.0)) == [1.0]
    assert origins_of(3, ()) == [None, None, None]


@pytest.mark.asyncio
async def test_the_track_records_latency_of_new_frames_only():
    track = OutputTrack(lambda: 60.0)
    assert track.latency.percentile_ms(50) is None
    made = time.monotonic()
    track.push(np.stack([frame(0), frame(1)]), [made - 0.5, made - 0.4])
    await track.recv()
    await track.recv()
    median = track.latency.percentile_ms(50)
    assert median is not None and median >= 400.0
    track.hold = track.frozen = True
    for _ in range(3):
        await track.recv()  # repeats of the frozen frame are no new output
    assert len(track.latency) == 2
    track.hold = track.frozen = False
    for _ in range(30):
        track.push(np.stack([frame(2)]))  # made without input
        await track.recv()
    assert track.latency.percentile_ms(50) is None and track.latency.percentile_ms(95) is None
    with pytest.raises(ValueError, match="2 origins for 1 frames"):
        track.push(np.stack([frame(3)]), [1.0, 2.0])
    track.stop()
