"""Model status and download endpoints, against the in-process server and a local fake hub."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from scope.models.artifacts import Artifact
from scope.pipelines import registry
from scope.pipelines.base import PipelineInfo
from tests.fakehub import FakeHub
from tests.pipelines import DownloadablePipeline
from tests.polling import wait_until

pytestmark = pytest.mark.usefixtures("jp_serverapp", "test_pipelines")

BASE, EXTRA = "test-org/tiny-base", "test-org/tiny-extra"
PIPELINE = DownloadablePipeline.info.id


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


BASE_FILES = {
    "config.json": b'{"dim": 64, "layers": 2}',
    "weights.safetensors": _blob(1, 200_000),
    "google/tok/spiece.model": _blob(2, 40_000),
    "google/tok/tokenizer.json": b'{"vocab": ["a", "b"]}',
    "README.md": b"# tiny base (never needed)",
    "unused.safetensors": _blob(3, 50_000),
}
EXTRA_FILES = {"extra.pt": _blob(4, 120_000), "other.pt": _blob(5, 30_000)}
CONTENT = {BASE: BASE_FILES, EXTRA: EXTRA_FILES}
#: What test-download needs: (repo, path) -> bytes.
NEEDED = {
    (BASE, "config.json"),
    (BASE, "weights.safetensors"),
    (BASE, "google/tok/spiece.model"),
    (BASE, "google/tok/tokenizer.json"),
    (EXTRA, "extra.pt"),
}
NEEDED_BYTES = sum(len(CONTENT[repo][path]) for repo, path in NEEDED)
PROGRESS_KEYS = {"is_downloading", "percentage", "bytes_done", "bytes_total", "current_artifact", "error"}


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:  # noqa: F811
    fake_hub.add_repo(BASE, BASE_FILES)
    fake_hub.add_repo(EXTRA, EXTRA_FILES)
    fake_hub.chunk_size = 16 * 1024
    return fake_hub


@pytest.fixture
def scope_extra_config(hub: FakeHub, monkeypatch: pytest.MonkeyPatch):
    """Point the server at the fake hub: the download manager reads the environment when it is built."""
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return {}


@pytest.fixture
def models_dir(scope_dirs) -> Path:
    return scope_dirs["models"]


@pytest.fixture(autouse=True)
def _downloads_end(services, hub: FakeHub):
    """No download thread outlives its test."""
    yield
    hub.release()
    hub.release_file()
    hub.heal()
    for pipeline_id in (PIPELINE, SharingPipeline.info.id):
        services.downloads.join(pipeline_id, timeout=20)


def _dest(models_dir: Path, repo_id: str, path: str) -> Path:
    return models_dir / repo_id.rsplit("/", 1)[-1] / path


def _all_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


async def status(api, pipeline_id: str = PIPELINE) -> dict:
    reply = await api("GET", f"api/v1/models/status?pipeline_id={pipeline_id}")
    assert reply.status == 200, reply.body
    body = reply.json
    assert set(body) == {"downloaded", "progress", "synthetic"}
    assert body.pop("synthetic") is False  # nothing here writes synthetic weights
    if body["progress"] is not None:
        assert set(body["progress"]) == PROGRESS_KEYS
        assert 0 <= body["progress"]["percentage"] <= 100
    return body


async def download(api, pipeline_id: str = PIPELINE):
    return await api("POST", "api/v1/models/download", {"pipeline_id": pipeline_id})


async def poll(api, until, pipeline_id: str = PIPELINE, timeout: float = 30.0) -> list[dict]:
    """Read the status until ``until(status)``; returns every status read."""
    seen = []

    async def read() -> dict:
        seen.append(await status(api, pipeline_id))
        return seen[-1]

    await wait_until(until, timeout, f"the download status of {pipeline_id} to match", value=read, interval=0.01)
    return seen


def _finished(body: dict) -> bool:
    return body["progress"] is None or not body["progress"]["is_downloading"]


# Status and download ----------------------------------------------------------------------


async def test_server_uses_the_fake_hub(services, hub: FakeHub):
    assert services.downloads.endpoint == hub.endpoint


async def test_not_downloaded_before_anything(api, hub: FakeHub):
    assert await status(api) == {"downloaded": False, "progress": None}
    assert hub.requests == []


async def test_download_runs_with_whole_pipeline_progress(api, hub: FakeHub, models_dir: Path):
    hub.hold()  # every transfer waits before its first chunk
    reply = await download(api)
    assert reply.status == 200, reply.body
    assert reply.json == {"message": f"Model download started for {PIPELINE}"}
    second = await download(api)
    assert second.status == 409, second.body
    assert second.json == {"detail": f"Download already in progress for {PIPELINE}"}

    first = await status(api)
    assert first["downloaded"] is False
    assert first["progress"]["is_downloading"] is True
    assert first["progress"]["error"] is None

    # Listing is done and the first transfer is waiting on the hub.
    held = (await poll(api, lambda s: s["progress"]["bytes_total"] > 0 and s["progress"]["current_artifact"] == BASE))
    held = held[-1]["progress"]
    assert held == {
        "is_downloading": True,
        "percentage": 0.0,
        "bytes_done": 0,
        "bytes_total": NEEDED_BYTES,
        "current_artifact": BASE,
        "error": None,
    }
    assert (await download(api)).status == 409

    # The first artifact goes through; the second waits before its first byte.
    hub.hold_file(EXTRA, "extra.pt")
    hub.release()
    seen = await poll(api, lambda s: s["progress"]["current_artifact"] == EXTRA and hub.file_held(EXTRA, "extra.pt"))
    between = seen[-1]["progress"]
    base_bytes = sum(len(CONTENT[repo][path]) for repo, path in NEEDED if repo == BASE)
    assert between["bytes_done"] == base_bytes and 0 < between["percentage"] < 100, between
    assert between["is_downloading"] and between["error"] is None and not seen[-1]["downloaded"]
    hub.release_file(EXTRA, "extra.pt")
    seen += await poll(api, lambda s: s["downloaded"])
    assert seen[-1] == {"downloaded": True, "progress": None}

    running = [s["progress"] for s in seen if s["progress"] is not None]
    assert all(p["is_downloading"] or p["percentage"] == 100.0 for p in running)
    assert all(not s["downloaded"] for s in seen[:-1])
    percentages = [p["percentage"] for p in running]
    assert percentages == sorted(percentages), percentages
    assert any(0 < p < 100 for p in percentages), percentages
    done = [p["bytes_done"] for p in running]
    assert done == sorted(done) and all(0 <= d <= NEEDED_BYTES for d in done)
    assert {p["bytes_total"] for p in running} == {NEEDED_BYTES}
    assert {p["current_artifact"] for p in running if p["is_downloading"]} <= {BASE, EXTRA}
    assert any(p["current_artifact"] == EXTRA for p in running), "the second artifact never showed"

    for repo_id, path in NEEDED:
        assert _dest(models_dir, repo_id, path).read_bytes() == CONTENT[repo_id][path], path
    expected_files = {_dest(models_dir, repo_id, path) for repo_id, path in NEEDED}
    assert set(_all_files(models_dir)) == expected_files  # nothing unneeded, no partial files
    assert {(r.repo_id, r.path) for r in hub.served()} == NEEDED

    # The record is gone for good, and a new download finds everything in place.
    assert await status(api) == {"downloaded": True, "progress": None}
    served = len(hub.served())
    again = await download(api)
    assert again.status == 200, again.body
    await poll(api, lambda s: s["downloaded"] and s["progress"] is None)
    assert len(hub.served()) == served


async def test_second_post_right_after_the_first_is_409(api, hub: FakeHub):
    replies = await asyncio.gather(download(api), download(api), download(api))
    assert sorted(r.status for r in replies) == [200, 409, 409]
    await poll(api, lambda s: s["downloaded"])


@pytest.mark.parametrize(
    ("mode", "fragment"),
    [("error", "HTTP 500"), ("corrupt", "corrupt"), ("short", "corrupt")],
)
async def test_failure_is_reported_and_kept_until_the_next_download(
    api, hub: FakeHub, models_dir: Path, mode: str, fragment: str
):
    hub.fail(EXTRA, "extra.pt", mode)
    assert (await download(api)).status == 200
    seen = await poll(api, _finished)
    failed = seen[-1]
    assert failed["downloaded"] is False
    progress = failed["progress"]
    assert progress["is_downloading"] is False
    assert progress["error"] and fragment in progress["error"] and "extra.pt" in progress["error"], progress
    assert 0 <= progress["percentage"] < 100
    assert not _dest(models_dir, EXTRA, "extra.pt").exists()
    assert not [p for p in _all_files(models_dir) if p.name.endswith(".incomplete")]

    for _ in range(3):  # reading the status does not clear the error
        assert await status(api) == failed

    hub.heal()
    assert (await download(api)).status == 200
    restarted = await status(api)
    assert restarted["downloaded"] is False
    assert restarted["progress"] is None or restarted["progress"]["error"] is None
    seen = await poll(api, lambda s: s["downloaded"])
    assert seen[-1] == {"downloaded": True, "progress": None}
    assert all(s["progress"] is None or s["progress"]["error"] is None for s in seen)
    assert _dest(models_dir, EXTRA, "extra.pt").read_bytes() == EXTRA_FILES["extra.pt"]


async def test_failure_with_some_files_already_present_keeps_the_error(api, hub: FakeHub, models_dir: Path):
    """downloaded stays false while a file is missing, and the error is shown next to it."""
    hub.fail(BASE, "weights.safetensors", "error", status=503)
    assert (await download(api)).status == 200
    failed = (await poll(api, _finished))[-1]
    assert failed["downloaded"] is False
    assert "HTTP 503" in failed["progress"]["error"]
    assert _dest(models_dir, BASE, "config.json").read_bytes() == BASE_FILES["config.json"]
    assert not _dest(models_dir, EXTRA, "extra.pt").exists()
    assert await status(api) == failed


@pytest.mark.parametrize("pipeline_id", ["passthrough", "test-pattern"])
async def test_pipelines_without_files_are_downloaded_already(api, hub: FakeHub, models_dir: Path, pipeline_id: str):
    assert await status(api, pipeline_id) == {"downloaded": True, "progress": None}
    reply = await download(api, pipeline_id)
    assert reply.status == 200, reply.body
    assert isinstance(reply.json["message"], str)
    assert await status(api, pipeline_id) == {"downloaded": True, "progress": None}
    assert (await download(api, pipeline_id)).status == 200  # never "in progress"
    assert hub.requests == []
    assert _all_files(models_dir) == []


# Validation -------------------------------------------------------------------------------


async def test_unknown_pipeline_is_422_on_both_endpoints(api, hub: FakeHub):
    reply = await api("GET", "api/v1/models/status?pipeline_id=no-such-pipeline")
    assert reply.status == 422, reply.body
    assert [e["loc"] for e in reply.json["detail"]] == [["query", "pipeline_id"]]
    assert "no-such-pipeline" in reply.json["detail"][0]["msg"]

    reply = await download(api, "no-such-pipeline")
    assert reply.status == 422, reply.body
    assert [e["loc"] for e in reply.json["detail"]] == [["body", "pipeline_id"]]
    assert "no-such-pipeline" in reply.json["detail"][0]["msg"]
    assert hub.requests == []


@pytest.mark.parametrize("query", ["", "?pipeline_id=", "?pipeline=test-download"])
async def test_status_without_pipeline_id_is_422(api, query: str):
    reply = await api("GET", f"api/v1/models/status{query}")
    assert reply.status == 422, reply.body
    assert any(e["loc"] == ["query", "pipeline_id"] for e in reply.json["detail"])


@pytest.mark.parametrize(
    "body",
    [{"pipeline_id": ""}, {}, {"pipeline_id": None}, {"pipeline_id": 5}, {"pipeline_id": ["test-download"]}, []],
)
async def test_invalid_download_bodies_are_422(api, hub: FakeHub, body):
    reply = await api("POST", "api/v1/models/download", body)
    assert reply.status == 422, reply.body
    detail = reply.json["detail"]
    assert isinstance(detail, list) and detail
    if isinstance(body, dict):
        assert any(e["loc"] == ["body", "pipeline_id"] for e in detail), detail
    assert hub.requests == []


async def test_empty_download_body_is_422(api):
    reply = await api("POST", "api/v1/models/download", body=b"", headers={"Content-Type": "application/json"})
    assert reply.status == 422, reply.body


@pytest.mark.parametrize("raw", [b"{", b"pipeline_id=test-download", b'{"pipeline_id": "test-download"', b"\xff\xfe"])
async def test_malformed_json_is_400(api, hub: FakeHub, raw: bytes):
    reply = await api("POST", "api/v1/models/download", body=raw, headers={"Content-Type": "application/json"})
    assert reply.status == 400, reply.body
    assert isinstance(reply.json["detail"], str)
    assert hub.requests == []


# Concurrency ------------------------------------------------------------------------------


class SharingPipeline(DownloadablePipeline):
    """Shares most files with test-download, plus one of its own."""

    info = PipelineInfo(
        id="test-download-sharing",
        name="Test download (sharing)",
        description="Shares files with test-download (tests only).",
        supported_modes=("text",),
        default_mode="text",
    )
    artifacts = (
        Artifact(BASE, ("config.json", "weights.safetensors", "google")),
        Artifact(EXTRA, ("other.pt",)),
    )


async def test_two_pipelines_sharing_files_download_at_the_same_time(api, hub: FakeHub, models_dir: Path):
    registry.register(SharingPipeline)
    try:
        sharing = SharingPipeline.info.id
        hub.hold()
        assert (await download(api)).status == 200
        assert (await download(api, sharing)).status == 200
        # Both are running at once (each waits: one on the hub, the other on the shared file).
        for pipeline_id in (PIPELINE, sharing):
            body = await status(api, pipeline_id)
            assert body["downloaded"] is False and body["progress"]["is_downloading"] is True
        assert (await download(api, sharing)).status == 409
        hub.chunk_delay = 0.002
        hub.release()

        for pipeline_id in (PIPELINE, sharing):
            seen = await poll(api, _finished, pipeline_id)
            assert seen[-1]["progress"] is None or seen[-1]["progress"]["error"] is None, seen[-1]
            assert await status(api, pipeline_id) == {"downloaded": True, "progress": None}

        wanted = NEEDED | {(EXTRA, "other.pt")}
        for repo_id, path in wanted:
            assert _dest(models_dir, repo_id, path).read_bytes() == CONTENT[repo_id][path], path
            assert hub.request_count(repo_id, path) == 1, path  # shared files fetched once
        assert set(_all_files(models_dir)) == {_dest(models_dir, r, p) for r, p in wanted}
    finally:
        registry.unregister(SharingPipeline.info.id)
