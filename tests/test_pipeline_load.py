"""The load state machine over HTTP: validation, idempotence, conflicts, errors, unload."""

from __future__ import annotations

import threading

import pytest

from tests.conftest import wait_for_status
from tests.pipelines import PatternPipeline

pytestmark = pytest.mark.usefixtures("jp_serverapp")


async def test_quick_start_load_of_passthrough(api):
    reply = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "passthrough"})
    assert reply.status == 200
    assert reply.json == {"message": "Pipeline loading initiated successfully"}
    status = await wait_for_status(api, "loaded")
    assert status["pipeline_id"] == "passthrough"
    assert status["load_params"] == {"height": 512, "width": 512}
    assert status["loaded_lora_adapters"] is None
    assert status["error"] is None


async def test_pipeline_ids_list_form(api):
    reply = await api("POST", "api/v1/pipeline/load", {"pipeline_ids": ["passthrough"], "load_params": {"height": 256}})
    assert reply.status == 200
    status = await wait_for_status(api, "loaded")
    assert status["load_params"] == {"height": 256, "width": 512}


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({}, ["body", "pipeline_id"]),
        ({"pipeline_ids": []}, ["body", "pipeline_ids"]),
        ({"pipeline_ids": ["passthrough", "passthrough"]}, ["body", "pipeline_ids"]),
        ({"pipeline_id": "passthrough", "load_params": {"height": 0}}, ["body", "load_params", "height"]),
        ({"pipeline_id": "passthrough", "load_params": {"height": "tall"}}, ["body", "load_params", "height"]),
        ({"pipeline_id": "passthrough", "load_params": {"colour": 1}}, ["body", "load_params", "colour"]),
        ({"pipeline_id": "passthrough", "load_params": [1]}, ["body", "load_params"]),
        ({"pipeline_id": 5}, ["body", "pipeline_id"]),
    ],
)
async def test_invalid_load_requests_get_422_naming_the_field(api, body, loc):
    reply = await api("POST", "api/v1/pipeline/load", body)
    assert reply.status == 422, reply.body
    errors = reply.json["detail"]
    assert any(e["loc"] == loc for e in errors), errors
    assert (await api("GET", "api/v1/pipeline/status")).json["status"] == "not_loaded"


async def test_unknown_pipeline_gets_422_listing_known_ids(api):
    reply = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "no-such"})
    assert reply.status == 422
    error = reply.json["detail"][0]
    assert error["loc"] == ["body", "pipeline_id"]
    assert "passthrough" in error["msg"] and "passthrough" in error["known"]


async def test_malformed_json_is_400(api):
    reply = await api("POST", "api/v1/pipeline/load", body=b"{not json", headers={"Content-Type": "application/json"})
    assert reply.status == 400
    assert "Malformed JSON" in reply.json["detail"]


async def test_loading_before_200_then_conflict_and_idempotence(api, test_pipelines, services):
    PatternPipeline.gate = threading.Event()
    reply = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern"})
    assert reply.status == 200
    # The state changed before the answer: no race for a poller.
    status = (await api("GET", "api/v1/pipeline/status")).json
    assert status["status"] == "loading"
    assert status["pipeline_id"] == "test-pattern"
    # Same target while loading: idempotent.
    same = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern", "load_params": {"seed": 42}})
    assert same.status == 200
    # Different target while loading: conflict.
    other = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern", "load_params": {"seed": 7}})
    assert other.status == 409
    assert "loading" in other.json["detail"]
    # /health and the status answer while the load still blocks the device thread.
    assert (await api("GET", "health")).status == 200
    assert (await api("GET", "api/v1/pipeline/status")).json["status"] == "loading"
    PatternPipeline.gate.set()
    await wait_for_status(api, "loaded")
    loaded = services.manager.pipeline
    again = await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern"})
    assert again.status == 200
    # A load would have shown as "loading" before this answer (see above).
    assert (await api("GET", "api/v1/pipeline/status")).json["status"] == "loaded"
    await services.manager.wait_idle()
    assert services.manager.pipeline is loaded
    assert PatternPipeline.loads == 1, "an identical load must not reload"


async def test_error_persists_until_next_load(api, test_pipelines):
    await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern", "load_params": {"fail_load": True}})
    status = await wait_for_status(api, "error")
    assert "weights are corrupt" in status["error"]
    assert status["error"].startswith("Failed to load pipeline test-pattern")
    # Not one-shot: a second read still sees it.
    assert (await api("GET", "api/v1/pipeline/status")).json["status"] == "error"
    await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern"})
    status = await wait_for_status(api, "loaded")
    assert status["error"] is None


async def test_unload_frees_the_pipeline(api, services):
    await api("POST", "api/v1/pipeline/load", {"pipeline_id": "passthrough"})
    await wait_for_status(api, "loaded")
    reply = await api("POST", "api/v1/pipeline/unload")
    assert reply.status == 200
    status = (await api("GET", "api/v1/pipeline/status")).json
    assert status["status"] == "not_loaded" and status["pipeline_id"] is None
    assert services.manager.pipeline is None


async def test_reload_with_different_params_replaces_pipeline(api, test_pipelines, services):
    await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern"})
    await wait_for_status(api, "loaded")
    first = services.manager.pipeline
    await api("POST", "api/v1/pipeline/load", {"pipeline_id": "test-pattern", "load_params": {"height": 32}})
    status = await wait_for_status(api, "loaded")
    assert status["load_params"]["height"] == 32
    assert services.manager.pipeline is not first
    assert PatternPipeline.loads == 2
