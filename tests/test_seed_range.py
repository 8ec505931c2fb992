"""Seeds: 0..2**63-1 accepted, anything else 422 naming ``seed``; chunk seeds wrap mod 2**64.

Before, ``seed = 2**70`` loaded with 200 and every chunk then failed ("Overflow when unpacking
long long").
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import scope
from scope.params import MAX_SEED
from scope.pipelines.longlive import LongLiveConfig
from scope.pipelines.wan.causal_stream import chunk_seed
from tests._subprocess_server import ScopeServer

HEIGHT, WIDTH = 32, 48


@pytest.mark.parametrize("seed", [2**63, 2**70, -1])
def test_server_refuses_seeds_outside_the_range(scope_server_process: ScopeServer, seed):
    with scope_server_process.client() as client:
        reply = client.post("/api/v1/pipeline/load", json={"pipeline_id": "longlive", "load_params": {"seed": seed}})
        assert reply.status_code == 422, reply.text
        assert reply.json()["detail"][0]["loc"][-1] == "seed"
        assert reply.json()["detail"][0]["loc"] == ["body", "load_params", "seed"]
        assert client.get("/api/v1/pipeline/status").json()["status"] == "not_loaded"


def test_config_schema_bounds_base_seed(scope_server_process: ScopeServer):
    with scope_server_process.client() as client:
        schema = client.get("/api/v1/pipelines/schemas").json()["pipelines"]["longlive"]["config_schema"]
    assert schema["properties"]["base_seed"]["maximum"] == MAX_SEED == 2**63 - 1
    assert schema["properties"]["base_seed"]["minimum"] == 0
    with pytest.raises(ValueError):
        LongLiveConfig(base_seed=2**63)


def test_chunk_seed_wraps_into_64_bits():
    assert chunk_seed(7, 3) == 10, "the reference's seed + start frame, unchanged below 2**64"
    assert chunk_seed(MAX_SEED, 6) == 2**63 + 5
    assert chunk_seed(2**64 - 2, 5) == 3
    for seed, frame in ((MAX_SEED, 3), (2**64 - 1, 1), (2**64 - 2, 7)):
        wrapped = torch.randn(8, generator=torch.Generator().manual_seed(chunk_seed(seed, frame)))
        expected = torch.randn(8, generator=torch.Generator().manual_seed((seed + frame) % 2**64))
        assert torch.equal(wrapped, expected)


def test_largest_seed_generates_deterministic_chunks(synthetic_models):
    pipeline = scope.load_pipeline("longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=MAX_SEED)
    first, second = pipeline.open_stream(), pipeline.open_stream()
    a = [first.generate(prompts="a red fox").frames] + [first.generate().frames for _ in range(2)]
    b = [second.generate(prompts="a red fox").frames] + [second.generate().frames for _ in range(2)]
    assert [chunk.shape[0] for chunk in a] == [9, 12, 12]
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert first.current_start_frame == 9, "the chunk seeds went past 2**63 - 1 (a signed 64-bit integer)"


def test_stream_noise_matches_the_wrapped_reference_seed(synthetic_models):
    """The chunk generator draws what ``manual_seed((seed + start frame) % 2**64)`` draws."""
    for seed in (7, MAX_SEED):
        pipeline = scope.load_pipeline("longlive", models_dir=synthetic_models, height=HEIGHT, width=WIDTH, seed=seed)
        stream = pipeline.open_stream()
        stream.generate(prompts="a lighthouse")
        frame = stream.current_start_frame
        ours = torch.randn(16, generator=stream._rng())
        reference = torch.randn(16, generator=torch.Generator().manual_seed((seed + frame) % 2**64))
        assert torch.equal(ours, reference)
