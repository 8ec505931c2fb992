"""Synthetic weights: every file in its real place, marked, deterministic, replaced by real ones."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from scope.models.artifacts import LONGLIVE_GENERATOR, PIPELINE_ARTIFACTS, is_downloaded, local_path, local_paths
from scope.models.download import DownloadManager
from scope.models.synthetic.writer import (
    MARKER_SUFFIX,
    is_synthetic_file,
    marker_path,
    uses_synthetic,
    write_synthetic,
)
from tests._subprocess_server import run_command, running_scope_server
from tests.conftest import SYNTHETIC_PIPELINES
from tests.fakehub import FakeHub
from tests.polling import wait_until

LONGLIVE = PIPELINE_ARTIFACTS["longlive"]
#: Each pipeline's checkpoint files as the real repositories ship them: the entry the tensors sit
#: under (None: the file is the state dict itself) and the prefix every key starts with.
CHECKPOINT_LAYOUTS = {
    "longlive": {
        "LongLive-1.3B/models/longlive_base.pt": ("generator", "model."),
        "LongLive-1.3B/models/lora.pt": ("generator_lora", "base_model.model.blocks."),
    },
    "reward-forcing": {"Reward-Forcing-T2V-1.3B/rewardforcing.pt": (None, "model.")},
    "memflow": {
        "MemFlow/base.pt": ("generator", "model."),
        "MemFlow/lora.pt": (None, "base_model.model.blocks."),
    },
    "streamdiffusionv2": {"StreamDiffusionV2/wan_causal_dmd_v2v/model.pt": ("generator", "model.")},
    "krea-realtime-video": {"krea-realtime-video/krea-realtime-video-14b.safetensors": (None, "model.")},
}


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def check_checkpoint_layouts(models_dir: Path, pipeline_id: str) -> None:
    from safetensors.torch import load_file

    for name, (entry, prefix) in CHECKPOINT_LAYOUTS[pipeline_id].items():
        path = models_dir / name
        state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
        if entry is not None:
            assert list(state) == [entry], f"{name}: {list(state)[:3]}"
            state = state[entry]
        assert state and all(k.startswith(prefix) and isinstance(v, torch.Tensor) for k, v in state.items()), name
        if "lora" in name:
            assert any(k.endswith(".lora_A.weight") for k in state) and any(k.endswith(".lora_B.weight") for k in state)
        assert is_synthetic_file(models_dir / name)


@pytest.mark.parametrize("pipeline_id", SYNTHETIC_PIPELINES)
def test_every_artifact_entry_is_written_in_its_real_place_with_a_marker(synthetic_models, pipeline_id):
    artifacts = PIPELINE_ARTIFACTS[pipeline_id]
    assert is_downloaded(synthetic_models, artifacts)
    for path in local_paths(synthetic_models, artifacts):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.name.endswith(MARKER_SUFFIX)]
        assert files, path
        for file in files:
            assert is_synthetic_file(file), file
            assert json.loads(marker_path(file).read_text())["size"] == file.stat().st_size
    tokenizer = synthetic_models / "Wan2.1-T2V-1.3B" / "google" / "umt5-xxl"
    assert (tokenizer / "tokenizer.json").is_file() and (tokenizer / "tokenizer_config.json").is_file()
    config = json.loads((synthetic_models / "Wan2.1-T2V-1.3B" / "config.json").read_text())
    assert {"dim", "ffn_dim", "num_heads", "num_layers", "text_len"} <= set(config)
    assert uses_synthetic(synthetic_models, artifacts)
    check_checkpoint_layouts(synthetic_models, pipeline_id)


@pytest.mark.parametrize("pipeline_id", SYNTHETIC_PIPELINES)
def test_writing_is_deterministic_for_a_seed(tmp_path, synthetic_models, pipeline_id):
    artifacts = PIPELINE_ARTIFACTS[pipeline_id]
    write_synthetic(tmp_path / "a", artifacts)
    written = digest(tmp_path / "a")
    assert written and written.items() <= digest(synthetic_models).items()
    write_synthetic(tmp_path / "b", artifacts, seed=1)
    differing = [k for k, v in digest(tmp_path / "b").items() if written.get(k) != v]
    assert set(CHECKPOINT_LAYOUTS[pipeline_id]) <= set(differing)


def test_real_files_are_never_overwritten(tmp_path):
    real = local_path(tmp_path, LONGLIVE_GENERATOR, "models/lora.pt")
    real.parent.mkdir(parents=True)
    real.write_bytes(b"real weights")
    written = write_synthetic(tmp_path, LONGLIVE)
    assert real not in written and real.read_bytes() == b"real weights"
    assert not is_synthetic_file(real)


def test_a_real_download_replaces_synthetic_files(tmp_path, fake_hub: FakeHub, synthetic_models):
    write_synthetic(tmp_path, LONGLIVE)
    dest = local_path(tmp_path, LONGLIVE_GENERATOR, "models/lora.pt")
    fake_hub.add_repo(LONGLIVE_GENERATOR.repo_id, {"models/longlive_base.pt": b"B" * 5000, "models/lora.pt": b"L" * 3000})
    manager = DownloadManager(tmp_path, endpoint=fake_hub.endpoint, token="")
    manager.download("longlive-generator", [LONGLIVE_GENERATOR])
    assert dest.read_bytes() == b"L" * 3000
    assert not marker_path(dest).exists() and not is_synthetic_file(dest)
    # Other files stay synthetic, so the pipeline still counts as using synthetic weights.
    assert uses_synthetic(tmp_path, LONGLIVE)


@pytest.mark.parametrize("pipeline_id", SYNTHETIC_PIPELINES)
def test_download_models_synthetic_command(tmp_path, pipeline_id):
    result = run_command("download_models", "--pipeline", pipeline_id, "--synthetic", root=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "synthetic" in result.stdout.lower()
    artifacts = PIPELINE_ARTIFACTS[pipeline_id]
    assert is_downloaded(tmp_path / "models", artifacts) and uses_synthetic(tmp_path / "models", artifacts)
    check_checkpoint_layouts(tmp_path / "models", pipeline_id)
    others = set(CHECKPOINT_LAYOUTS) - {pipeline_id}
    assert not any((tmp_path / "models" / name).exists() for other in others for name in CHECKPOINT_LAYOUTS[other])


@pytest.mark.parametrize("pipeline_id", SYNTHETIC_PIPELINES)
@pytest.mark.usefixtures("jp_serverapp")
async def test_models_download_endpoint_writes_synthetic_weights(api, scope_dirs, test_pipelines, pipeline_id):
    before = (await api("GET", f"api/v1/models/status?pipeline_id={pipeline_id}")).json
    assert before == {"downloaded": False, "progress": None, "synthetic": False}
    reply = await api("POST", "api/v1/models/download", {"pipeline_id": pipeline_id, "synthetic": True})
    assert reply.status == 200 and "Synthetic" in reply.json["message"]

    async def read_status() -> dict:
        return (await api("GET", f"api/v1/models/status?pipeline_id={pipeline_id}")).json

    status = await wait_until(lambda s: s["downloaded"], 60, f"synthetic {pipeline_id} weights", value=read_status)
    assert status["synthetic"] is True, status
    check_checkpoint_layouts(scope_dirs["models"], pipeline_id)
    # A pipeline whose files have no synthetic writer is refused by name.
    refused = await api("POST", "api/v1/models/download", {"pipeline_id": "test-download", "synthetic": True})
    assert refused.status == 422 and refused.json["detail"][0]["loc"] == ["body", "synthetic"]


def test_server_synthetic_flag_writes_weights_on_load_only_when_asked(tmp_path):
    with running_scope_server(tmp_path / "plain") as server, server.client() as client:
        client.post("/api/v1/pipeline/load", json={"pipeline_id": "longlive"})
        status = server.wait_status(client, ("error",), timeout=60)
        assert "missing" in status["error"]
        assert not any((tmp_path / "plain" / "models").rglob("*.pt"))
    with running_scope_server(tmp_path / "synthetic", "--synthetic") as server, server.client() as client:
        body = {"pipeline_id": "longlive", "load_params": {"height": 64, "width": 96}}
        assert client.post("/api/v1/pipeline/load", json=body).status_code == 200
        status = server.wait_status(client, ("loaded",), timeout=120)
        assert status["synthetic"] is True
        assert client.get("/api/v1/models/status", params={"pipeline_id": "longlive"}).json()["synthetic"] is True


def test_prewarm_with_the_synthetic_environment_variable(tmp_path):
    """``PIPELINE=longlive`` loads at start-up; ``DAYDREAM_SCOPE_SYNTHETIC=1`` supplies the weights."""
    env = {"PIPELINE": "longlive", "DAYDREAM_SCOPE_SYNTHETIC": "1"}
    with running_scope_server(tmp_path, env=env) as server, server.client() as client:
        status = server.wait_status(client, ("loaded", "error"), timeout=120)
        assert status["status"] == "loaded", status
        assert status["pipeline_id"] == "longlive" and status["synthetic"] is True
        assert status["load_params"] == {
            "height": 320, "width": 576, "seed": 42, "quantization": None, "vae_type": "wan",
            "vace_enabled": False, "vace_mask_hint_padding": False, "vace_separate_control_caches": False,
            "loras": None, "lora_merge_mode": "permanent_merge",
        }
