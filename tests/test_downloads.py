"""Downloads of pipeline artifacts against a fake Hugging Face Hub on loopback."""

from __future__ import annotations

import os
import random
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

from scope.models import download as download_module
from scope.models.artifacts import (
    LIGHTVAE,
    PIPELINE_ARTIFACTS,
    TAE,
    WAN_1_3B,
    Artifact,
    format_bytes,
    is_downloaded,
    local_paths,
)
from scope.models.cli import download_models_main
from scope.models.download import (
    DownloadError,
    DownloadInProgress,
    DownloadManager,
    NotEnoughDiskSpace,
    Progress,
    VerificationFailed,
)
from tests.fakehub import FakeHub
from tests.polling import wait_until_sync

WAN_REPO = WAN_1_3B.repo_id
AE_REPO = LIGHTVAE.repo_id
GENERATOR = Artifact("Test-Org/Tiny-Generator", ("models/base.pt",))
VAE = "Wan2.1_VAE.pth"
#: Longest a download here may take: generous for a loaded machine, each takes well under a second.
DEADLINE_S = 60


def _blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


WAN_FILES = {
    "config.json": b'{"dim": 1536, "num_layers": 30}',
    VAE: _blob(1, 300_000),
    "google/umt5-xxl/spiece.model": _blob(2, 20_000),
    "google/umt5-xxl/tokenizer.json": _blob(3, 50_000),
    "google/umt5-xxl/special_tokens_map.json": b'{"eos_token": "</s>"}',
    "models_t5_umt5-xxl-enc-bf16.pth": _blob(4, 80_000),  # in the repo, never needed
    "README.md": b"# Wan2.1",
}
AE_FILES = {
    "lightvaew2_1.pth": _blob(5, 100_000),
    "taew2_1.pth": _blob(6, 60_000),
    "lighttaew2_1.pth": _blob(7, 70_000),
}
GENERATOR_FILES = {"models/base.pt": _blob(8, 120_000), "models/other.pt": _blob(9, 1_000)}

WANTED = {
    (WAN_REPO, path)
    for path in WAN_FILES
    if path in WAN_1_3B.files or path.startswith("google/")
} | {(AE_REPO, "lightvaew2_1.pth")}
PIPELINE = (WAN_1_3B, LIGHTVAE)


def _content(repo_id: str, path: str) -> bytes:
    return {WAN_REPO: WAN_FILES, AE_REPO: AE_FILES, GENERATOR.repo_id: GENERATOR_FILES}[repo_id][path]


def _dest(models_dir: Path, repo_id: str, path: str) -> Path:
    return models_dir / repo_id.rsplit("/", 1)[-1] / path


@pytest.fixture
def hub(fake_hub: FakeHub) -> FakeHub:  # noqa: F811
    fake_hub.add_repo(WAN_REPO, WAN_FILES)
    fake_hub.add_repo(AE_REPO, AE_FILES)
    fake_hub.add_repo(GENERATOR.repo_id, GENERATOR_FILES)
    return fake_hub


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def manager(hub: FakeHub, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> DownloadManager:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return DownloadManager(models_dir, endpoint=hub.endpoint, chunk_size=16 * 1024)


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


# Artifacts --------------------------------------------------------------------------------


def test_artifact_tables_follow_the_spec():
    assert WAN_1_3B.local_dir == "Wan2.1-T2V-1.3B"
    assert set(PIPELINE_ARTIFACTS) == {
        "streamdiffusionv2", "longlive", "krea-realtime-video", "reward-forcing", "memflow"
    }
    krea_repos = [a.repo_id for a in PIPELINE_ARTIFACTS["krea-realtime-video"]]
    assert "Wan-AI/Wan2.1-T2V-14B" in krea_repos
    krea_files = [f for a in PIPELINE_ARTIFACTS["krea-realtime-video"] for f in a.files]
    assert "Wan2_1-VACE_module_1_3B_bf16.safetensors" not in krea_files
    assert PIPELINE_ARTIFACTS["longlive"][-1].files == ("models/longlive_base.pt", "models/lora.pt")


def test_is_downloaded_checks_files_and_directories(tmp_path: Path):
    assert is_downloaded(tmp_path, ())
    paths = local_paths(tmp_path, [WAN_1_3B])
    assert paths[-1] == tmp_path / "Wan2.1-T2V-1.3B" / "google"
    assert not is_downloaded(tmp_path, [WAN_1_3B])
    for path in paths[:2]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    (paths[2] / "umt5-xxl").mkdir(parents=True)
    assert not is_downloaded(tmp_path, [WAN_1_3B])  # empty directory
    (paths[2] / "umt5-xxl" / "spiece.model.incomplete").write_bytes(b"x")
    assert not is_downloaded(tmp_path, [WAN_1_3B])  # only a partial file
    (paths[2] / "umt5-xxl" / "spiece.model").write_bytes(b"x")
    assert is_downloaded(tmp_path, [WAN_1_3B])
    paths[0].write_bytes(b"")
    assert not is_downloaded(tmp_path, [WAN_1_3B])  # empty file


# Downloads --------------------------------------------------------------------------------


def test_download_lands_files_and_reports_whole_pipeline_progress(manager: DownloadManager, models_dir: Path):
    seen: list[Progress] = []
    manager.download("wan", PIPELINE, on_progress=seen.append)

    for repo_id, path in WANTED:
        assert _dest(models_dir, repo_id, path).read_bytes() == _content(repo_id, path)
    assert len(_files_under(models_dir)) == len(WANTED)  # nothing unlisted, no partial files
    assert is_downloaded(models_dir, PIPELINE)

    total = sum(len(_content(*key)) for key in WANTED)
    counted = [p for p in seen if p.bytes_total]
    assert {p.bytes_total for p in counted} == {total}
    done = [p.bytes_done for p in counted]
    assert done == sorted(done)
    assert any(0 < p.percentage < 100 for p in counted)
    assert {p.current_artifact for p in counted} == {WAN_REPO, AE_REPO}
    assert manager.progress("wan") == {
        "is_downloading": False,
        "percentage": 100.0,
        "bytes_done": total,
        "bytes_total": total,
        "current_artifact": None,
        "error": None,
    }
    assert manager.clear_finished("wan")
    assert manager.progress("wan") is None


def test_directory_entry_brings_everything_under_it(manager: DownloadManager, models_dir: Path, hub: FakeHub):
    hub.page_size = 2  # the folder listing spans several pages
    manager.download("tokenizer", [Artifact(WAN_REPO, ("google",))])
    folder = models_dir / "Wan2.1-T2V-1.3B"
    expected = sorted(p for p in WAN_FILES if p.startswith("google/"))
    assert sorted(str(p.relative_to(folder)) for p in _files_under(folder)) == expected
    for path in expected:
        assert (folder / path).read_bytes() == WAN_FILES[path]


def test_start_marks_running_at_once_and_refuses_a_second_start(manager: DownloadManager, hub: FakeHub):
    hub.hold()
    manager.start("wan", PIPELINE)
    first = manager.progress("wan")
    assert first is not None and first["is_downloading"] and first["error"] is None
    with pytest.raises(DownloadInProgress, match="Download already in progress for wan"):
        manager.start("wan", PIPELINE)
    with pytest.raises(DownloadInProgress):
        manager.download("wan", PIPELINE)

    held = wait_until_sync(lambda p: p["bytes_total"] > 0, what="the listing", value=lambda: manager.progress("wan"))
    assert held["is_downloading"] and held["percentage"] < 100
    hub.release()
    assert manager.join("wan", timeout=DEADLINE_S)
    final = manager.progress("wan")
    assert final["percentage"] == 100.0 and final["error"] is None and not final["is_downloading"]


def test_http_error_is_kept_in_progress_until_the_next_start(
    manager: DownloadManager, models_dir: Path, hub: FakeHub
):
    hub.fail(WAN_REPO, VAE, "error", status=500)
    manager.start("wan", PIPELINE)
    assert manager.join("wan", timeout=DEADLINE_S)
    failed = manager.progress("wan")
    assert not failed["is_downloading"]
    assert "HTTP 500" in failed["error"] and VAE in failed["error"]
    assert not _dest(models_dir, WAN_REPO, VAE).exists()
    assert not manager.clear_finished("wan")  # failures stay visible
    assert manager.progress("wan")["error"]

    hub.heal()
    manager.start("wan", PIPELINE)
    assert manager.progress("wan")["error"] is None
    assert manager.join("wan", timeout=DEADLINE_S)
    assert manager.progress("wan")["percentage"] == 100.0
    assert _dest(models_dir, WAN_REPO, VAE).read_bytes() == WAN_FILES[VAE]


@pytest.mark.parametrize(("mode", "message"), [("short", "expected 300000"), ("corrupt", "sha256")])
def test_corrupt_transfer_leaves_nothing_behind(
    manager: DownloadManager, models_dir: Path, hub: FakeHub, mode: str, message: str
):
    hub.fail(WAN_REPO, VAE, mode)
    with pytest.raises(VerificationFailed, match=message):
        manager.download("wan", PIPELINE)
    dest = _dest(models_dir, WAN_REPO, VAE)
    assert not dest.exists()
    assert not dest.with_name(VAE + ".incomplete").exists()
    assert message in manager.progress("wan")["error"]


def test_interrupted_transfer_resumes_with_range(manager: DownloadManager, models_dir: Path, hub: FakeHub):
    hub.fail(WAN_REPO, VAE, "truncate", times=1)
    with pytest.raises(DownloadError, match="resume"):
        manager.download("wan", PIPELINE)
    partial = _dest(models_dir, WAN_REPO, VAE).with_name(VAE + ".incomplete")
    kept = partial.stat().st_size
    assert 0 < kept < len(WAN_FILES[VAE])

    manager.download("wan", PIPELINE)
    assert hub.range_headers(WAN_REPO, VAE) == [None, f"bytes={kept}-"]
    assert hub.served(WAN_REPO, VAE)[-1].bytes_sent == len(WAN_FILES[VAE]) - kept
    assert _dest(models_dir, WAN_REPO, VAE).read_bytes() == WAN_FILES[VAE]
    assert not partial.exists()


def _plant_partial(models_dir: Path, data: bytes) -> Path:
    partial = _dest(models_dir, WAN_REPO, VAE).with_name(VAE + ".incomplete")
    partial.parent.mkdir(parents=True, exist_ok=True)
    partial.write_bytes(data)
    return partial


def test_existing_partial_is_resumed(manager: DownloadManager, models_dir: Path, hub: FakeHub):
    _plant_partial(models_dir, WAN_FILES[VAE][:1000])
    seen: list[Progress] = []
    manager.download("wan", PIPELINE, on_progress=seen.append)
    assert hub.range_headers(WAN_REPO, VAE) == ["bytes=1000-"]
    assert hub.bytes_served(WAN_REPO, VAE) == len(WAN_FILES[VAE]) - 1000
    assert _dest(models_dir, WAN_REPO, VAE).read_bytes() == WAN_FILES[VAE]
    assert seen[-1].bytes_done == seen[-1].bytes_total


def test_partial_with_wrong_bytes_fails_the_hash_check(manager: DownloadManager, models_dir: Path):
    partial = _plant_partial(models_dir, b"\0" * 1000)
    with pytest.raises(VerificationFailed, match="sha256"):
        manager.download("wan", PIPELINE)
    assert not partial.exists()
    assert not _dest(models_dir, WAN_REPO, VAE).exists()


@pytest.mark.parametrize("server", ["ignores ranges", "answers 416"])
def test_partial_restarts_from_zero_when_the_server_cannot_resume(
    manager: DownloadManager, models_dir: Path, hub: FakeHub, server: str
):
    if server == "ignores ranges":
        hub.honour_ranges = False
    else:
        hub.fail(WAN_REPO, VAE, "unsatisfiable", times=1)
    _plant_partial(models_dir, WAN_FILES[VAE][:1000])
    manager.download("wan", PIPELINE)
    assert _dest(models_dir, WAN_REPO, VAE).read_bytes() == WAN_FILES[VAE]
    assert hub.range_headers(WAN_REPO, VAE)[0] == "bytes=1000-"
    assert hub.bytes_served(WAN_REPO, VAE) == len(WAN_FILES[VAE])


def test_complete_files_are_skipped(manager: DownloadManager, models_dir: Path, hub: FakeHub):
    manager.download("wan", PIPELINE)
    fetched = len(hub.served())
    wrong_size = _dest(models_dir, AE_REPO, "lightvaew2_1.pth")
    wrong_size.write_bytes(b"stale")

    seen: list[Progress] = []
    manager.download("wan", PIPELINE, on_progress=seen.append)
    assert [(r.repo_id, r.path) for r in hub.served()[fetched:]] == [(AE_REPO, "lightvaew2_1.pth")]
    assert wrong_size.read_bytes() == AE_FILES["lightvaew2_1.pth"]
    assert seen[-1].percentage == 100.0


def test_overlapping_downloads_share_files_safely(hub: FakeHub, models_dir: Path):
    hub.chunk_size = 8 * 1024
    hub.chunk_delay = 0.001
    first = DownloadManager(models_dir, endpoint=hub.endpoint, token="", chunk_size=8 * 1024)
    second = DownloadManager(models_dir, endpoint=hub.endpoint, token="", chunk_size=8 * 1024)
    first.start("one", (WAN_1_3B, LIGHTVAE))
    second.start("two", (WAN_1_3B, TAE))
    assert first.join("one", timeout=DEADLINE_S) and second.join("two", timeout=DEADLINE_S)
    assert first.progress("one")["error"] is None and second.progress("two")["error"] is None
    assert first.progress("one")["percentage"] == second.progress("two")["percentage"] == 100.0

    for repo_id, path in WANTED | {(AE_REPO, "taew2_1.pth")}:
        assert _dest(models_dir, repo_id, path).read_bytes() == _content(repo_id, path)
        assert hub.request_count(repo_id, path) == 1, path
    assert not [p for p in _files_under(models_dir) if p.name.endswith(".incomplete")]


def test_threads_of_one_manager_share_files_safely(manager: DownloadManager, models_dir: Path, hub: FakeHub):
    hub.chunk_delay = 0.001
    errors: list[BaseException] = []

    def run(pipeline_id: str) -> None:
        try:
            manager.download(pipeline_id, PIPELINE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(f"p{i}",)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=DEADLINE_S)
    assert not [thread for thread in threads if thread.is_alive()], "a download is still running"
    assert not errors
    assert hub.request_count(WAN_REPO, VAE) == 1
    assert _dest(models_dir, WAN_REPO, VAE).read_bytes() == WAN_FILES[VAE]


def test_not_enough_disk_space_fails_before_any_byte(
    manager: DownloadManager, models_dir: Path, hub: FakeHub, monkeypatch: pytest.MonkeyPatch
):
    def tiny_disk(path):
        return SimpleNamespace(total=10_000, used=9_000, free=1_000)

    monkeypatch.setattr(download_module.shutil, "disk_usage", tiny_disk)
    total = sum(len(_content(*key)) for key in WANTED)
    with pytest.raises(NotEnoughDiskSpace) as failure:
        manager.download("wan", PIPELINE)
    message = str(failure.value)
    assert f"{total} bytes" in message and "1000 bytes" in message
    assert hub.served() == []
    assert _files_under(models_dir) == []
    assert "disk space" in manager.progress("wan")["error"]


def test_redirected_downloads_are_followed(manager: DownloadManager, models_dir: Path, hub: FakeHub):
    hub.redirect_lfs = True
    manager.download("wan", PIPELINE)
    assert {r.path for r in hub.served(kind="redirect")} >= {VAE, "lightvaew2_1.pth"}
    assert _dest(models_dir, WAN_REPO, VAE).read_bytes() == WAN_FILES[VAE]


def test_missing_entry_is_reported(manager: DownloadManager):
    with pytest.raises(DownloadError, match="has no nope.pth"):
        manager.download("bad", [Artifact(WAN_REPO, ("config.json", "nope.pth"))])
    with pytest.raises(DownloadError, match="could not list files of Nobody/Nothing"):
        manager.download("bad", [Artifact("Nobody/Nothing", ("x.pt",))])


def test_token_is_sent_everywhere(hub: FakeHub, models_dir: Path):
    hub.required_token = "hf_secret"
    DownloadManager(models_dir, endpoint=hub.endpoint, token="hf_secret").download("wan", PIPELINE)
    assert {r.authorization for r in hub.requests} == {"Bearer hf_secret"}
    with pytest.raises(DownloadError, match="could not list files"):
        DownloadManager(models_dir / "other", endpoint=hub.endpoint, token="").download("wan", PIPELINE)


def test_endpoint_and_token_default_to_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9/")
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    manager = DownloadManager(tmp_path)
    assert (manager.endpoint, manager.token) == ("http://127.0.0.1:9", "hf_env")
    monkeypatch.delenv("HF_ENDPOINT")
    assert DownloadManager(tmp_path).endpoint == "https://huggingface.co"


# Command line -----------------------------------------------------------------------------


@pytest.fixture
def tiny_pipeline():
    from scope.pipelines.base import Pipeline, PipelineInfo
    from scope.pipelines.registry import register, unregister

    class TinyPipeline(Pipeline):
        info = PipelineInfo(
            id="tiny-download-test",
            name="Tiny",
            description="Test pipeline with a few small artifacts.",
            supported_modes=("text",),
            default_mode="text",
        )
        artifacts = (WAN_1_3B, LIGHTVAE, GENERATOR)

    register(TinyPipeline)
    yield TinyPipeline
    unregister(TinyPipeline.info.id)


@pytest.fixture
def cli_env(hub: FakeHub, monkeypatch: pytest.MonkeyPatch) -> FakeHub:
    monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    return hub


def test_cli_downloads_a_registered_pipeline(cli_env, tiny_pipeline, models_dir: Path, capsys):
    assert download_models_main(["-p", "tiny-download-test", "--models-dir", str(models_dir)]) == 0
    out, err = capsys.readouterr()
    # Not a terminal: one line per artifact, no bar.
    assert err.splitlines() == [
        f"{artifact.repo_id}: {format_bytes(sum(len(_content(artifact.repo_id, path)) for path in files))} done"
        for artifact, files in _fetched_files(tiny_pipeline.artifacts)
    ], err
    assert "tiny-download-test" in out
    assert is_downloaded(models_dir, tiny_pipeline.artifacts)
    generator = models_dir / "Tiny-Generator" / "models" / "base.pt"
    assert generator.read_bytes() == GENERATOR_FILES["models/base.pt"]
    assert not (models_dir / "Tiny-Generator" / "models" / "other.pt").exists()


def _fetched_files(artifacts) -> list[tuple[Artifact, list[str]]]:
    """Each repo's files in download order, once each (repos sharing files list them once)."""
    seen: set[tuple[str, str]] = set()
    out: list[tuple[Artifact, list[str]]] = []
    for artifact in artifacts:
        files = [p for p in _content_paths(artifact) if (artifact.repo_id, p) not in seen]
        seen.update((artifact.repo_id, p) for p in files)
        if files:
            out.append((artifact, files))
    return out


def _content_paths(artifact: Artifact) -> list[str]:
    repo = {WAN_REPO: WAN_FILES, AE_REPO: AE_FILES, GENERATOR.repo_id: GENERATOR_FILES}[artifact.repo_id]
    return [p for p in repo if any(p == f or p.startswith(f.rstrip("/") + "/") for f in artifact.files)]


def test_cli_progress_through_a_pipe_is_one_line_per_artifact(
    cli_env, tiny_pipeline, models_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    """``download_models ... 2>&1 | cat``: one line per artifact, nothing a bar redraws."""
    read_end, write_end = os.pipe()
    with open(read_end, encoding="utf-8") as reader, open(write_end, "w", encoding="utf-8") as writer:
        with monkeypatch.context() as patched:
            patched.setattr(sys, "stderr", writer)
            patched.setattr(sys, "stdout", writer)
            code = download_models_main(["-p", "tiny-download-test", "--models-dir", str(models_dir)])
        writer.close()
        shown = reader.read()
    assert code == 0, shown
    assert "\r" not in shown and "B/s" not in shown and "it/s" not in shown, shown
    per_artifact = [line for line in shown.splitlines() if line.endswith(" done")]
    assert [line.split(":")[0] for line in per_artifact] == [a.repo_id for a, _ in _fetched_files(tiny_pipeline.artifacts)]


def test_cli_uses_the_default_models_dir(
    cli_env, tiny_pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("DAYDREAM_SCOPE_MODELS_DIR", str(tmp_path / "env-models"))
    assert download_models_main(["--pipeline", "tiny-download-test"]) == 0
    assert is_downloaded(tmp_path / "env-models", tiny_pipeline.artifacts)


def test_cli_unknown_pipeline(capsys):
    assert download_models_main(["-p", "no-such-pipeline"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: unknown pipeline 'no-such-pipeline'. Known: ")
    assert "passthrough" in err and "longlive" in err


def test_cli_passthrough_needs_nothing(capsys, tmp_path: Path):
    assert download_models_main(["-p", "passthrough", "--models-dir", str(tmp_path)]) == 0
    assert "nothing to download" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


def test_cli_reports_failures(cli_env, tiny_pipeline, models_dir: Path, capsys):
    cli_env.fail(GENERATOR.repo_id, "models/base.pt", "error", status=503)
    assert download_models_main(["-p", "tiny-download-test", "--models-dir", str(models_dir)]) == 1
    assert "ERROR: HTTP 503" in capsys.readouterr().err


def test_cli_interrupt_exits_130(
    cli_env, tiny_pipeline, models_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
):
    def interrupted(self, pipeline_id, artifacts, on_progress=None, *, synthetic=False):
        raise KeyboardInterrupt

    monkeypatch.setattr(DownloadManager, "download", interrupted)
    assert download_models_main(["-p", "tiny-download-test", "--models-dir", str(models_dir)]) == 130
    assert "resume" in capsys.readouterr().err
