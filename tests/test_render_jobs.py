"""Render jobs on a real server: a timeline POSTed renders into an MP4 beside the live sessions.

The server runs on loopback with a models directory that holds synthetic ``longlive`` weights
only (links into the shared synthetic directory), so a ``memflow`` job finds its own files
missing. The hashes a job reports are checked against ``scope.render`` in this process.
"""

from __future__ import annotations

import io

import av
import pytest

import scope
from scope.models.artifacts import PIPELINE_ARTIFACTS
from tests.polling import wait_until

pytestmark = pytest.mark.usefixtures("jp_serverapp")

SMALL = {"height": 64, "width": 96, "seed": 7}
TIMELINE = {
    "pipeline_id": "longlive",
    "load_params": SMALL,
    "initial_parameters": {"prompts": "a red fox"},
    "events": [{"chunk": 2, "parameters": {"prompts": "a lighthouse"}}],
    "length_chunks": 4,
}
FINISHED = ("done", "failed", "cancelled")


@pytest.fixture(scope="module")
def longlive_only(synthetic_models, tmp_path_factory):
    """A models directory with longlive's files (linked), and no other pipeline's."""
    root = tmp_path_factory.mktemp("longlive-only")
    for artifact in PIPELINE_ARTIFACTS["longlive"]:
        link = root / artifact.local_dir
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(synthetic_models / artifact.local_dir)
    return root


@pytest.fixture
def scope_extra_config(longlive_only, tmp_path):
    return {"models_dir": str(longlive_only), "recordings_dir": str(tmp_path / "recordings")}


async def submit(api, timeline: dict) -> dict:
    reply = await api("POST", "api/v1/render", {"timeline": timeline})
    assert reply.status == 202, reply.body
    # The URL is under the server's base URL (this Jupyter server's is not "/").
    assert reply.json["status"] == "queued" and reply.json["url"] == f"{jupyter_base_url()}api/v1/render/{reply.json['job_id']}"
    return reply.json


def jupyter_base_url() -> str:
    from jupyter_server.serverapp import ServerApp

    return ServerApp.instance().base_url


def under_base(url: str) -> str:
    """A URL the server gave, as the ``api`` fixture takes it (relative to the base URL)."""
    base = jupyter_base_url()
    assert url.startswith(base), url
    return url[len(base):]


async def job_state(api, job_id: str) -> dict:
    reply = await api("GET", f"api/v1/render/{job_id}")
    assert reply.status == 200, reply.body
    return reply.json


async def finished(api, job_id: str, timeout: float = 60) -> dict:
    async def read():
        return await job_state(api, job_id)

    return await wait_until(lambda s: s["status"] in FINISHED, timeout, f"render job {job_id} to finish", value=read)


async def test_a_job_renders_the_timeline_into_an_mp4_with_the_in_process_hashes(api, services, longlive_only):
    job = await submit(api, TIMELINE)
    state = await finished(api, job["job_id"])
    assert state["status"] == "done", state
    assert state["progress"] == {"chunks_done": 4, "chunks_total": 4}
    render = state["result"]["render"]
    expected = scope.render(TIMELINE, models_dir=longlive_only)
    assert render["hashes"] == {str(k): v for k, v in expected.hashes.items()}
    assert render["frames"] == expected.frames

    video = await api("GET", under_base(state["result"]["url_video"]))
    assert video.status == 200 and video.headers["Content-Type"] == "video/mp4"
    with av.open(io.BytesIO(video.body)) as container:
        pictures = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    assert len(pictures) == expected.frames and pictures[0].shape == (64, 96, 3)
    provenance = await api("GET", under_base(state["result"]["url_provenance"]))
    assert provenance.status == 200
    assert provenance.json["pipeline_id"] == "longlive" and provenance.json["timings"]["frames"] == expected.frames
    assert all(weight["synthetic"] for weight in provenance.json["weights"])

    # Forgotten: the files go with it.
    folder = services.settings.recordings_path / "renders" / job["job_id"]
    assert (folder / "render.mp4").is_file()
    assert (await api("DELETE", f"api/v1/render/{job['job_id']}")).status == 200
    assert (await api("GET", f"api/v1/render/{job['job_id']}")).status == 404
    assert not folder.exists()


async def test_a_job_neither_changes_the_current_pipeline_nor_keeps_its_slot(api):
    assert (await api("POST", "api/v1/pipeline/load", {"pipeline_id": "passthrough"})).status == 200
    job = await submit(api, {**TIMELINE, "length_chunks": 2})
    state = await finished(api, job["job_id"])
    assert state["status"] == "done", state
    status = (await api("GET", "api/v1/pipeline/status")).json
    assert status["pipeline_id"] == "passthrough" and status["status"] == "loaded"
    longlive = [entry for entry in status["pipelines"] if entry["pipeline_id"] == "longlive"]
    assert longlive and longlive[0]["current"] is False and longlive[0]["sessions"] == []


async def test_a_cancelled_job_stops_between_chunks_and_leaves_no_files(api, services):
    job = await submit(api, {**TIMELINE, "length_chunks": 2000})
    await wait_until(
        lambda s: s["progress"]["chunks_done"] >= 2, 60, "the long job to render chunks", value=lambda: job_state(api, job["job_id"])
    )
    folder = services.settings.recordings_path / "renders" / job["job_id"]
    assert folder.is_dir()
    reply = await api("DELETE", f"api/v1/render/{job['job_id']}")
    assert reply.status == 200 and reply.json["status"] == "cancelled", reply.body
    assert reply.json["progress"]["chunks_done"] < 2000
    assert not folder.exists()
    assert (await job_state(api, job["job_id"]))["status"] == "cancelled"
    assert (await api("GET", f"api/v1/render/{job['job_id']}/video")).status == 409
    status = (await api("GET", "api/v1/pipeline/status")).json
    assert [entry["sessions"] for entry in status["pipelines"] if entry["pipeline_id"] == "longlive"] == [[]]


async def test_a_job_whose_pipeline_files_are_missing_fails_naming_them(api):
    job = await submit(api, {**TIMELINE, "pipeline_id": "memflow"})
    state = await finished(api, job["job_id"])
    assert state["status"] == "failed" and state["result"] is None
    assert "MemFlow" in state["error"] and "base.pt" in state["error"], state["error"]


@pytest.mark.parametrize(
    "timeline, loc",
    [
        ({**TIMELINE, "pipeline_id": "nope"}, ["body", "timeline", "pipeline_id"]),
        ({**TIMELINE, "events": [{"chunk": 1, "parameters": {"noise_scale": 7}}]}, ["body", "timeline", "events", 0, "parameters", "noise_scale"]),
        ({**TIMELINE, "length_chunks": 10**9}, ["body", "timeline", "length_chunks"]),
        ({**TIMELINE, "input": {"path": "../../etc/passwd"}}, ["body", "timeline", "input", "path"]),
    ],
)
async def test_an_invalid_timeline_is_refused_naming_the_field(api, timeline, loc):
    reply = await api("POST", "api/v1/render", {"timeline": timeline})
    assert reply.status == 422, reply.body
    assert loc in [error["loc"] for error in reply.json["detail"]], reply.json


async def test_unknown_jobs_and_recordings_are_not_found(api):
    for path in ("api/v1/render/0123456789abcdef0123456789abcdef", "api/v1/render/..%2F..%2Fetc", "api/v1/render/x/video"):
        assert (await api("GET", path)).status == 404, path
    assert (await api("DELETE", "api/v1/render/0123456789abcdef0123456789abcdef")).status == 404
    reply = await api("POST", "api/v1/render", {"recording": "not-a-session"})
    assert reply.status == 422 and reply.json["detail"][0]["loc"] == ["body", "recording"]


async def test_a_render_that_cannot_fit_the_recordings_quota_is_refused(api, services, monkeypatch):
    """Renders are kept in the recordings directory, under its quota: a full one gets 507 and
    no job (and no folder) is made."""
    folder = services.settings.recordings_path
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "filler.bin").write_bytes(b"x" * 4096)
    monkeypatch.setattr(services.sessions.recordings, "quota_bytes", 4096)
    reply = await api("POST", "api/v1/render", {"timeline": TIMELINE})
    assert reply.status == 507 and "recordings_quota_bytes" in reply.json["detail"], reply.body
    assert not services.renders.jobs
    assert not (folder / "renders").exists() or not any((folder / "renders").iterdir())
