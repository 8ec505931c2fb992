"""bench/recording.py at its smallest: the render against the pipeline on synthetic weights and on
the real shape's path, and recording off against on in a session on a real server."""

from __future__ import annotations

import json
import math

from bench import recording


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_render_against_the_pipeline_reproduces_every_chunk(tmp_path, capsys, synthetic_models, one_thread):
    out = tmp_path / "render.json"
    argv = ["--skip", "stream", "--size", "64x64", "--chunks", "4", "--models-dir", str(synthetic_models), "--json", str(out)]
    assert recording.main(argv) == 0
    section = json.loads(out.read_text())["render"]
    assert section["size"] == "64x64" and section["chunks"] == 4 and section["weights"] == "synthetic"
    # A chunk of 9 frames, then 12 each; the updates the timeline and the stream were given.
    assert section["frames"] == 9 + 3 * 12
    assert section["updates"] == {"0": ["prompts"], "1": ["prompts"], "2": ["transition"]}
    assert section["hashes_equal"] == {"pipeline": True, "render_chunks": True, "render_file": True}
    assert section["mismatched_chunks"] == {"pipeline": [], "render_chunks": [], "render_file": []}
    assert section["render_notes"] == [] and section["mp4_bytes"] > 0
    for name in ("pipeline", "render_chunks", "render_file", "render_file_loop"):
        row = section["timings"][name]
        assert all(positive(row[key]) for key in ("seconds", "chunks_per_s", "fps", "ms_per_frame")), (name, row)
        assert math.isclose(row["fps"] / row["chunks_per_s"], section["frames"] / 4, rel_tol=0.01), (name, row)
    assert all(positive(ratio) for ratio in section["ratios"].values()), section["ratios"]
    recorder = section["recorder"]
    assert recorder["frames"] == section["frames"] and recorder["size"] == "64x64"
    assert all(positive(recorder[key]) for key in ("video_ms", "hash_ms", "ms_per_frame", "fraction_of_pipeline"))
    assert recorder["input_ms"] == 0, "text mode: no input to store"
    printed = capsys.readouterr().out
    assert "Render against the pipeline" in printed and "render_chunks True, scope.render True" in printed


def test_a_render_that_differs_is_broken(tmp_path, capsys, synthetic_models, one_thread, monkeypatch):
    """A timeline that loses an update renders other frames: the run says so and exits 1."""
    document = recording.timeline_document

    def without_transition(*args, **kwargs):
        built = document(*args, **kwargs)
        return {**built, "events": [e for e in built["events"] if "transition" not in e["parameters"]]}

    monkeypatch.setattr(recording, "timeline_document", without_transition)
    out = tmp_path / "broken.json"
    argv = ["--skip", "stream", "--size", "64x64", "--chunks", "3", "--models-dir", str(synthetic_models), "--json", str(out)]
    assert recording.main(argv) == 1
    section = json.loads(out.read_text())["render"]
    assert section["hashes_equal"] == {"pipeline": True, "render_chunks": False, "render_file": False}
    assert section["mismatched_chunks"]["render_chunks"] == [2] == section["mismatched_chunks"]["render_file"]
    assert "BROKEN: the chunks differ" in capsys.readouterr().err


def test_render_on_the_real_shape_path(tmp_path, one_thread):
    out = tmp_path / "real.json"
    argv = ["--skip", "stream", "--device", "cpu", "--layers", "1", "--vae-base", "4", "--size", "32x32", "--chunks", "3",
            "--json", str(out)]
    assert recording.main(argv) == 0
    section = json.loads(out.read_text())["render"]
    assert section["weights"].startswith("random, real shape (1 layers")
    assert all(section["hashes_equal"].values()) and positive(section["ratios"]["render_chunks_to_pipeline"])


def test_recording_off_against_on_in_a_streaming_session(tmp_path, capsys):
    out = tmp_path / "stream.json"
    argv = ["--skip", "render", "--stream-size", "256x64", "--fps", "15", "--seconds", "1.5", "--repeats", "1", "--json", str(out)]
    assert recording.main(argv) == 0
    section = json.loads(out.read_text())["stream"]
    assert section["config"]["mode"] == "video" and section["config"]["order"] == ["off", "on"]
    for side in ("off", "on"):
        row = section[side]
        assert row["phases"] == 1 and row["received_frames"] > 0, (side, row)
        assert all(positive(row[key]) for key in ("chunk_ms", "stats_fps", "received_fps", "server_cpu_ms_per_frame")), (side, row)
    assert all(positive(ratio) for ratio in section["ratios"].values()), section["ratios"]
    assert math.isfinite(section["added_server_cpu_ms_per_frame"])
    recorded = section["recorded"]
    assert recorded["recorded_chunks"] > 0 and recorded["recorded_frames"] == 4 * recorded["recorded_chunks"]
    assert recorded["recording_bytes"] > 0
    recorder = section["recorder"]
    assert recorder["frames"] == recorded["recorded_frames"] and recorder["size"] == "256x64"
    assert recorder["frames_per_chunk"] == 4
    for key in ("video_ms", "input_ms", "hash_ms", "ms_per_frame", "generation_ms_per_frame",
                "fraction_of_generation", "fraction_of_frame_interval"):
        assert positive(recorder[key]), (key, recorder)
    assert "Recording off against on" in capsys.readouterr().out
