"""Provenance names exactly what produced the frames: every weight file by content, the seeds,
the package and the machine.

The models directory is the real layout with synthetic weights (``longlive``'s), so the weight
list is checked against the files a load reads, and a file replaced by a "real" one stops
counting as synthetic. Digests are cached per (path, size, mtime): a checkpoint is hashed once,
and again only after it changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch
from pydantic import BaseModel

import scope
from scope import build_info
from scope.models.artifacts import LONGLIVE_GENERATOR, PIPELINE_ARTIFACTS, local_path
from scope.models.synthetic.lora import write_synthetic_lora
from scope.models.synthetic.writer import MARKER_SUFFIX, write_synthetic
from scope.pipelines.base import LoadContext
from scope.pipelines.registry import get_pipeline_class
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG
from scope.pipelines.wan.device import compute_device
from scope.recording import provenance as provenance_module
from scope.recording.provenance import FileDigests, provenance, run_environment, seeds_of, weight_files

LORA_NAME = "style.safetensors"


@pytest.fixture(scope="module")
def written_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance-models")
    write_synthetic(root, PIPELINE_ARTIFACTS["longlive"])
    return root


@pytest.fixture
def context(written_models, tmp_path):
    """A private copy of the layout (tests replace files in it) and a LoRA directory with one file."""
    models_dir = tmp_path / "models"
    shutil.copytree(written_models, models_dir)
    lora_dir = tmp_path / "loras"
    write_synthetic_lora(lora_dir / LORA_NAME, "peft", SYNTHETIC_WAN_CONFIG, seed=3)
    assets_dir = tmp_path / "assets"
    assets_dir.mkdir()
    return LoadContext(models_dir=models_dir, lora_dir=lora_dir, assets_dir=assets_dir)


def longlive_load(context: LoadContext, **fields):
    cls = get_pipeline_class("longlive")
    return cls, cls.load_params_model.model_validate(fields, context=context.validation_context())


def document(context: LoadContext, **fields) -> dict:
    cls, load_params = longlive_load(context, **fields)
    return provenance(
        pipeline_class=cls,
        load_params=load_params,
        context=context,
        initial_parameters={"prompts": [{"text": "a red fox", "weight": 1.0}], "base_seed": 42},
        seeds=seeds_of(load_params),
        device="cpu",
        dtype="float32",
        torch_threads=1,
        timings={"load_s": 1.5, "render_s": 2},
        digests=FileDigests(),
    )


def files_on_disk(root: Path) -> list[Path]:
    """Every file under ``root`` except synthetic markers: what a load of the layout reads."""
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.endswith(MARKER_SUFFIX))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_weight_file_is_listed_once_by_relative_path_with_its_digest(context):
    # The same LoRA named twice, relative and absolute: one file, listed once.
    loras = [{"path": LORA_NAME, "scale": 0.5}, {"path": str(context.lora_dir / LORA_NAME), "scale": 0.25}]
    doc = document(context, seed=7, loras=loras)
    listed = [entry["path"] for entry in doc["weights"]]
    assert len(listed) == len(set(listed))

    expected = {p.relative_to(context.models_dir).as_posix(): p for p in files_on_disk(context.models_dir)}
    expected[LORA_NAME] = context.lora_dir / LORA_NAME
    assert set(listed) == set(expected)
    assert "LongLive-1.3B/models/longlive_base.pt" in listed
    assert "Wan2.1-T2V-1.3B/google/umt5-xxl/tokenizer.json" in listed  # a directory entry's file
    for entry in doc["weights"]:
        path = expected[entry["path"]]
        assert entry["sha256"] == sha256_of(path), entry["path"]
        assert entry["bytes"] == path.stat().st_size
        # The layout is all synthetic; the user's LoRA was written without a marker.
        assert entry["synthetic"] is (entry["path"] != LORA_NAME), entry["path"]


def test_the_document_names_pipeline_load_seeds_package_and_machine(context):
    doc = document(context, seed=7)
    assert json.loads(json.dumps(doc)) == doc
    assert list(doc) == [
        "format", "pipeline_id", "load_params", "initial_parameters", "seeds", "weights", "package", "torch",
        "python", "platform", "device", "device_name", "dtype", "torch_threads", "timings", "created_at",
    ]
    assert doc["format"] == "scope-provenance/1"
    assert doc["pipeline_id"] == "longlive"
    assert doc["load_params"]["seed"] == 7 and doc["load_params"]["vae_type"] == "wan"
    assert doc["seeds"] == {"seed": 7}
    assert doc["initial_parameters"]["base_seed"] == 42
    assert doc["package"] == {"name": "daydream-scope", "version": scope.__version__, "commit": build_info.commit()}
    assert doc["torch"] == torch.__version__
    assert doc["device"] == "cpu" and doc["device_name"] and doc["dtype"] == "float32"
    assert doc["timings"] == {"load_s": 1.5, "render_s": 2.0}
    assert doc["created_at"].endswith("+00:00")
    assert all(not Path(entry["path"]).is_absolute() for entry in doc["weights"])


def test_a_file_replaced_by_a_real_one_is_no_longer_synthetic(context):
    generator = local_path(context.models_dir, LONGLIVE_GENERATOR, "models/longlive_base.pt")
    generator.write_bytes(generator.read_bytes() + b"a real checkpoint is another file")
    doc = document(context)
    by_path = {entry["path"]: entry for entry in doc["weights"]}
    replaced = by_path["LongLive-1.3B/models/longlive_base.pt"]
    assert replaced["synthetic"] is False
    assert replaced["sha256"] == sha256_of(generator) and replaced["bytes"] == generator.stat().st_size
    assert by_path["LongLive-1.3B/models/lora.pt"]["synthetic"] is True


def test_a_lora_outside_both_directories_is_listed_by_absolute_path(context, tmp_path):
    outside = write_synthetic_lora(tmp_path / "elsewhere" / "mine.safetensors", "peft", SYNTHETIC_WAN_CONFIG, seed=4)
    cls = get_pipeline_class("longlive")
    load_params = cls.load_params_model.model_validate({"loras": [{"path": str(outside)}]})  # the kernel's API
    assert outside.resolve() in weight_files(cls, load_params, context)
    doc = provenance(
        pipeline_class=cls, load_params=load_params, context=context, initial_parameters={}, seeds={},
        device="cpu", dtype="float32", torch_threads=1, timings={}, digests=FileDigests(),
    )
    [entry] = [entry for entry in doc["weights"] if entry["path"].endswith("mine.safetensors")]
    assert entry["path"] == outside.resolve().as_posix() and entry["sha256"] == sha256_of(outside)


def test_only_existing_files_are_listed(context):
    shutil.rmtree(context.models_dir / "Wan2.1-T2V-1.3B" / "google")
    (context.models_dir / "Autoencoders" / "taew2_1.pth").unlink()
    cls = get_pipeline_class("longlive")
    # Without a validation context (the kernel's API) a LoRA that is not there gets through.
    load_params = cls.load_params_model.model_validate({"loras": [{"path": "gone.safetensors"}]})
    listed = weight_files(cls, load_params, context)
    assert listed and all(path.is_file() for path in listed)
    assert not any("google" in path.parts or path.name in ("taew2_1.pth", "gone.safetensors") for path in listed)


@pytest.fixture
def hash_calls(monkeypatch):
    """The paths the hashing function was asked to read, in order."""
    calls: list[Path] = []
    real = provenance_module.file_sha256

    def counting(path):
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(provenance_module, "file_sha256", counting)
    return calls


def test_file_digests_hash_a_file_once_until_it_changes(tmp_path, hash_calls):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"A" * 1000)
    stamp = path.stat().st_mtime_ns
    digests = FileDigests()
    first = digests.sha256(path)
    assert first == sha256_of(path)
    assert digests.sha256(path) == first and digests.sha256(tmp_path / "." / "weights.bin") == first
    assert len(hash_calls) == 1

    # Same size, new content, a later mtime: the cache must notice.
    path.write_bytes(b"B" * 1000)
    os.utime(path, ns=(stamp + 2_000_000_000, stamp + 2_000_000_000))
    assert digests.sha256(path) == sha256_of(path) != first
    assert len(hash_calls) == 2

    # Another size with the mtime put back: the cache must notice too.
    path.write_bytes(b"C" * 1001)
    os.utime(path, ns=(stamp + 2_000_000_000, stamp + 2_000_000_000))
    assert digests.sha256(path) == sha256_of(path)
    assert len(hash_calls) == 3
    assert digests.sha256(path) == sha256_of(path) and len(hash_calls) == 3


def test_file_digests_hash_once_when_threads_ask_together(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(os.urandom(4096))
    calls = []
    started = threading.Event()
    release = threading.Event()
    real = provenance_module.file_sha256

    def held(p):
        # The first hash waits until every thread has asked, so a missing lock shows as extra calls.
        calls.append(p)
        started.set()
        release.wait(30)
        return real(p)

    monkeypatch.setattr(provenance_module, "file_sha256", held)
    digests = FileDigests()
    results = []
    threads = [threading.Thread(target=lambda: results.append(digests.sha256(path))) for _ in range(6)]
    for thread in threads:
        thread.start()
    assert started.wait(30)
    # Give the other threads time to ask (without the lock, each would hash too), then let go.
    deadline = time.monotonic() + 0.5
    while len(calls) < len(threads) and time.monotonic() < deadline:
        time.sleep(0.01)
    release.set()
    for thread in threads:
        thread.join(30)
    assert results == [sha256_of(path)] * 6
    assert len(calls) == 1


def test_seeds_of_finds_every_seed_field():
    cls = get_pipeline_class("longlive")
    assert seeds_of(cls.load_params_model(seed=123)) == {"seed": 123}

    class Several(BaseModel):
        seed: int = 1
        noise_seed: int = 2
        seedless: int = 3
        steps: int = 4

    assert seeds_of(Several()) == {"seed": 1, "noise_seed": 2}


def test_run_environment_is_what_the_pipelines_use():
    device, dtype = compute_device()
    env = run_environment()
    assert env == {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "torch_threads": torch.get_num_threads()}
    assert env["dtype"] in ("float32", "bfloat16")
    assert run_environment("cpu")["device"] == "cpu" and run_environment("cpu")["dtype"] == "float32"
