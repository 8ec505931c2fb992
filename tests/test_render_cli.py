"""Headless renders: ``scope.render`` in process and ``daydream-scope render`` in a subprocess.

A hand-written ``longlive`` timeline (a prompt switch, a transition, a cache reset) on synthetic
weights at a tiny size: rendering it twice gives the same hashes, and the same hashes as a stream
driven through ``generate`` with the same updates at the same chunks, so the renderer replays
the session's bookkeeping. The command writes an MP4 PyAV reads and its provenance, and its
exit status says what went wrong: 1 a chunk that differs (``--check``), 2 an unusable timeline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pytest

import scope
from scope.recording.render import torch_threads
from scope.recording.timeline import chunk_hash

SMALL = {"height": 64, "width": 96, "seed": 7}
TRANSITION = {"target_prompts": "a city at night", "num_steps": 2}
#: Updates by chunk, as the data channel would send them.
UPDATES = {0: {"prompts": "a red fox"}, 2: {"prompts": "a lighthouse"}, 3: {"transition": TRANSITION}, 5: {"reset_cache": True}}
LENGTH = 7
#: The thread count the hashes are made with: frames made with another may differ in rounding
#: (CI's pytest runs torch on two threads, the command below on what the timeline says).
THREADS = 1
TIMELINE = {
    "pipeline_id": "longlive",
    "torch_threads": THREADS,
    "load_params": SMALL,
    "initial_parameters": UPDATES[0],
    "events": [{"chunk": chunk, "parameters": update} for chunk, update in UPDATES.items() if chunk],
    "length_chunks": LENGTH,
}
CLI_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def pipeline(synthetic_models):
    return scope.load_pipeline("longlive", models_dir=synthetic_models, **SMALL)


@pytest.fixture(scope="module")
def rendered(pipeline):
    return scope.render(TIMELINE, pipeline=pipeline)


def daydream_scope(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "from scope.cli import main; main()", *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def write(path: Path, document: dict) -> Path:
    path.write_text(json.dumps(document))
    return path


def test_a_timeline_renders_the_same_chunks_every_time(pipeline, rendered):
    assert rendered.chunks == LENGTH and len(rendered.hashes) == LENGTH
    again = scope.render(TIMELINE, pipeline=pipeline)
    assert again.hashes == rendered.hashes
    # The updates show: the prompt switch changes the frames.
    assert len(set(rendered.hashes.values())) == LENGTH


def test_a_render_replays_what_a_stream_does_with_the_same_updates(pipeline, rendered):
    stream = pipeline.open_stream()
    streamed = {}
    with torch_threads(THREADS):
        for chunk in range(LENGTH):
            update = dict(UPDATES.get(chunk, {}))
            reset = update.pop("reset_cache", False)
            streamed[chunk] = chunk_hash(stream.generate(reset_cache=reset, **update).frames)
    assert rendered.hashes == streamed


def test_the_command_writes_an_mp4_with_its_provenance_and_checks_hashes(synthetic_models, rendered, tmp_path):
    recorded = {
        **TIMELINE,
        "length_chunks": None,
        "chunks": [{"chunk": index, "frames": 9 if index in (0, 5) else 12, "sha256": rendered.hashes[index]} for index in range(LENGTH)],
    }
    timeline = write(tmp_path / "timeline.json", recorded)
    done = daydream_scope("render", str(timeline), "-o", "out.mp4", "--models-dir", str(synthetic_models), "--check", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert f"{LENGTH} of {LENGTH} recorded chunks reproduced" in done.stdout
    assert "chunk" in done.stderr  # the progress bar counts chunks
    with av.open(str(tmp_path / "out.mp4")) as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(frames) == rendered.frames and frames[0].shape == (64, 96, 3)
    provenance = json.loads((tmp_path / "out.provenance.json").read_text())
    assert provenance["pipeline_id"] == "longlive" and provenance["seeds"] == {"seed": 7}
    assert provenance["timings"]["frames"] == rendered.frames
    assert not list(tmp_path.glob("*.partial"))

    altered = json.loads(json.dumps(recorded))
    altered["chunks"][4]["sha256"] = "0" * 64
    checked = daydream_scope(
        "render", str(write(tmp_path / "altered.json", altered)), "--models-dir", str(synthetic_models), "--check", "-q", cwd=tmp_path
    )
    assert checked.returncode == 1, checked.stderr
    assert "chunk 4 differs" in checked.stderr
    assert "render:" not in checked.stderr  # -q: no progress bar


@pytest.mark.parametrize(
    "change, named",
    [
        ({"pipeline_id": "no-such-pipeline"}, "pipeline_id:"),
        ({"events": [{"chunk": 1, "parameters": {}}, {"chunk": 2, "parameters": {"noise_scale": 9}}]}, "events.1.parameters.noise_scale:"),
        ({"events": [{"chunk": 3, "parameters": {}}, {"chunk": 1, "parameters": {}}]}, "events.1.chunk:"),
    ],
)
def test_an_invalid_timeline_exits_2_naming_each_field(tmp_path, capsys, change, named):
    from scope.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["render", str(write(tmp_path / "bad.json", {**TIMELINE, **change})), "-o", str(tmp_path / "bad.mp4")])
    assert exited.value.code == 2
    assert named in capsys.readouterr().err
    assert not list(tmp_path.glob("bad.mp4*"))


def test_an_invalid_timeline_exits_2_from_the_command_too(tmp_path):
    done = daydream_scope("render", str(write(tmp_path / "bad.json", {**TIMELINE, "pipeline_id": "no-such-pipeline"})), cwd=tmp_path)
    assert done.returncode == 2 and "pipeline_id:" in done.stderr, done.stderr


def test_missing_weights_exit_2_naming_a_missing_file(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    done = daydream_scope("render", str(write(tmp_path / "t.json", TIMELINE)), "-o", "out.mp4", "--models-dir", str(empty), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "missing" in done.stderr and "longlive_base.pt" in done.stderr, done.stderr
    assert not list(tmp_path.glob("out.*"))


def test_the_command_prints_the_timeline_schema(tmp_path):
    done = daydream_scope("render", "--schema", cwd=tmp_path)
    assert done.returncode == 0
    schema = json.loads(done.stdout)
    assert schema["title"] == "Scope timeline" and "length_chunks" in schema["properties"]
