"""Timelines: the document's checks name each wrong field, and a session's log replays exactly.

The replay test drives a session's :class:`ParameterState` through updates, a failed chunk and a
transition, logs it as a session does, and checks that the renderer's bookkeeping hands every
chunk the very parameters the session handed its stream.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from scope.recording.render import _take, replay_start
from scope.recording.session_log import SessionLog
from scope.recording.timeline import InvalidTimeline, chunk_hash, parse_timeline, timeline_schema
from scope.streaming.parameter_state import ParameterState, for_stream_only

FOX = [{"text": "a red fox", "weight": 1.0}]
CITY = [{"text": "a city at night", "weight": 1.0}]
SEA = [{"text": "the sea", "weight": 1.0}]


def errors_of(document: dict) -> list[tuple[str, str]]:
    with pytest.raises(InvalidTimeline) as caught:
        parse_timeline(document)
    return [(".".join(map(str, e["loc"])), e["type"]) for e in caught.value.errors]


def test_each_wrong_field_is_named_from_the_document_root():
    assert errors_of({"pipeline_id": "nope", "length_chunks": 2}) == [("pipeline_id", "unknown_pipeline")]
    assert errors_of([]) == [("", "dict_type")]
    assert errors_of({"pipeline_id": "longlive"}) == [("length_chunks", "missing")]
    events = [{"chunk": 3, "parameters": {}}, {"chunk": 1, "parameters": {}}]
    assert errors_of({"pipeline_id": "longlive", "events": events, "length_chunks": 4}) == [("events.1.chunk", "events_order")]
    bad = {
        "pipeline_id": "longlive",
        "load_params": {"height": 17},
        "initial_parameters": {"prompts": 5},
        "events": [{"chunk": 0, "parameters": {}}, {"chunk": 2, "parameters": {"noise_scale": 3}}],
        "length_chunks": 4,
    }
    found = dict(errors_of(bad))
    assert set(found) == {"load_params.height", "initial_parameters.prompts", "events.1.parameters.noise_scale"}, found
    unknown = {"pipeline_id": "longlive", "events": [{"chunk": 1, "parameters": {"noise_sclae": 0.5}}], "length_chunks": 2}
    assert errors_of(unknown) == [("events.0.parameters.noise_sclae", "extra_forbidden")]
    chunks = [{"chunk": 4, "frames": 3, "sha256": "0" * 64}, {"chunk": 6, "frames": 3, "sha256": "0" * 64}]
    assert errors_of({"pipeline_id": "passthrough", "first_chunk": 4, "chunks": chunks}) == [("chunks.1.chunk", "chunks_order")]
    assert errors_of({"pipeline_id": "passthrough", "length_chunks": 2, "format": "other/9"})[0][0] == "format"


def test_a_valid_timeline_parses_with_its_pipeline_and_load_model():
    timeline, cls, load_params = parse_timeline(
        {"pipeline_id": "longlive", "load_params": {"height": 64, "width": 96}, "events": [{"chunk": 2, "parameters": {"prompts": "x"}}], "length_chunks": 5}
    )
    assert cls.info.id == "longlive" and (load_params.height, load_params.width) == (64, 96)
    assert timeline.end_chunk == 5 and replay_start(timeline) == 0 and timeline.events_at(2) == [{"prompts": "x"}]


def test_the_schema_is_published_with_every_field():
    schema = timeline_schema()
    assert schema["$id"].endswith("scope-timeline-1.json")
    assert {"pipeline_id", "load_params", "initial_parameters", "torch_threads", "device", "dtype", "events", "chunks", "input"} <= set(schema["properties"])


def test_chunk_hash_covers_the_pixels_and_the_shape():
    frames = np.arange(2 * 4 * 6 * 3, dtype=np.uint8).reshape(2, 4, 6, 3)
    assert chunk_hash(frames) == chunk_hash(frames.copy())
    changed = frames.copy()
    changed[1, 3, 5, 2] ^= 1
    assert chunk_hash(changed) != chunk_hash(frames)
    assert chunk_hash(frames.reshape(2, 6, 4, 3)) != chunk_hash(frames)


def test_a_logged_session_replays_with_the_parameters_each_chunk_took():
    """A session's parameter state and log, then the renderer's replay of that log: the same
    parameters at every chunk (one-shots once, a failed chunk's updates carried over, a
    finished transition's prompts, a pause noted but never handed to the stream)."""
    live = ParameterState({"prompts": FOX, "input_mode": "text"})
    log = SessionLog()
    taken: list[dict] = []
    script = {
        0: [{"noise_scale": 0.5}],  # before the first chunk: part of the initial parameters
        2: [{"prompts": CITY, "reset_cache": True}],
        3: [{"transition": {"target_prompts": SEA, "num_steps": 2}}],
        4: [{"noise_scale": 0.7}],  # taken by the attempt that fails
        6: [{"lora_scales": [{"path": "a.safetensors", "scale": 0.5}]}],
    }
    fail_at = {4}  # the attempt at chunk 4 fails once, and its updates wait for the retry
    chunk = 0
    while chunk < 8:
        for update in script.pop(chunk, []):
            live.update(update)
        if chunk == 5:
            log.note("paused", True)
        log.taking(live.pending)
        params = live.take_chunk()
        if chunk in fail_at:
            fail_at.discard(chunk)
            live.restore()
            live.update({"kv_cache_attention_bias": 0.3})  # arrives while the chunk fails
            continue
        taken.append(copy.deepcopy(params))
        if "transition" in params and chunk == 4:  # the transition ends at chunk 4
            live.finish_transition()
        log.took(chunk)
        chunk += 1

    timeline, _, _ = parse_timeline(
        {"pipeline_id": "longlive", "initial_parameters": log.initial, "events": log.events, "length_chunks": 8}
    )
    state = ParameterState(for_stream_only(timeline.initial_parameters))
    replayed = []
    for index in range(8):
        params = _take(state, timeline, index)
        replayed.append(copy.deepcopy(params))
        if "transition" in params and index == 4:
            state.finish_transition()
    assert replayed == taken
    assert {"chunk": 5, "parameters": {"paused": True}} in log.events
    assert all("paused" not in params for params in replayed)
    assert sum("reset_cache" in params for params in replayed) == 1
