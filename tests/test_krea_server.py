"""``krea-realtime-video`` behind a real ``daydream-scope`` (synthetic 14B stand-in, 64x96):
its schema, its load and stream parameter checks, and an aiortc text stream whose
``kv_cache_attention_bias`` and prompt change mid-stream.

One server for the module (its start and the pipeline's load are the cost); the tests that
refuse input run against it before and after the load, as a refusal changes nothing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from scope.models.artifacts import PIPELINE_ARTIFACTS
from scope.models.synthetic.writer import write_synthetic
from tests._subprocess_server import ScopeServer, running_scope_server
from tests.conftest import Reply
from tests.polling import wait_until
from tests.rtc import ScopeRtcClient, connected

pytestmark = pytest.mark.timeout(180)

PIPELINE = "krea-realtime-video"
SMALL = {"height": 64, "width": 96}
#: Output frames of the first chunk (3 latent frames, the first decoding to 1) and of the next ones.
FIRST_OUTPUT, OUTPUT_PER_CHUNK = 9, 12
BIAS_FIELD = "kv_cache_attention_bias"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> ScopeServer:
    """``daydream-scope`` whose models directory holds Krea's synthetic files only."""
    root = tmp_path_factory.mktemp("krea-server")
    write_synthetic(root / "models", PIPELINE_ARTIFACTS[PIPELINE])
    with running_scope_server(root) as server:
        yield server


@pytest.fixture(scope="module")
def loaded(server) -> dict:
    """The pipeline loaded at 64x96 through the REST API; its final status."""
    with server.client() as http:
        reply = http.post("/api/v1/pipeline/load", json={"pipeline_id": PIPELINE, "load_params": SMALL})
        assert reply.status_code == 200, reply.text
        return server.wait_status(http, ("loaded", "error"), timeout=120)


def rest(server: ScopeServer):
    """The ``api(method, path, json)`` callable :mod:`tests.rtc` signals through, on ``server``."""

    async def call(method: str, path: str, json_body: Any = None, **_: Any) -> Reply:
        async with httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=30) as http:
            response = await http.request(method, "/" + path.lstrip("/"), json=json_body)
        return Reply(response.status_code, response.headers, response.content)

    return call


def field_errors(reply: Reply) -> list[tuple[list, str]]:
    return [(error["loc"], error["msg"]) for error in reply.json["detail"]]


def test_the_schema_says_what_krea_is(server):
    with server.client() as http:
        pipelines = http.get("/api/v1/pipelines/schemas").json()["pipelines"]
    entry = pipelines[PIPELINE]
    assert (entry["supports_vace"], entry["supports_kv_cache_bias"]) == (False, True)
    assert entry["recommended_quantization_vram_threshold"] == 40 and entry["estimated_vram_gb"] == 32
    assert entry["default_temporal_interpolation_method"] == "linear"
    assert entry["default_temporal_interpolation_steps"] == 4
    assert entry["default_mode"] == "text"
    config = entry["config_schema"]["properties"]
    assert (config["height"]["default"], config["width"]["default"]) == (320, 576)
    assert config["denoising_steps"]["default"] == [1000, 750, 500, 250]
    load = entry["load_params_schema"]["properties"]
    assert (load["height"]["default"], load["width"]["default"]) == (512, 512)
    assert load["quantization"]["default"] is None
    assert load["kv_cache_attention_bias_mask_padding"]["default"] is False
    assert not [name for name in load if name.startswith("vace")], sorted(load)
    assert entry["mode_defaults"] == {
        "video": {"height": 256, "width": 256, "noise_scale": 0.7, "noise_controller": True, "denoising_steps": [1000, 750]}
    }
    # The bias acts in Krea only: the other causal pipelines accept it and say they ignore it.
    bias = entry["parameters_schema"]["properties"][BIAS_FIELD]
    number = next(option for option in bias["anyOf"] if option.get("type") == "number")
    assert "x-scope-unused" not in bias and (number["minimum"], number["maximum"]) == (0.01, 1.0)
    assert pipelines["longlive"]["parameters_schema"]["properties"][BIAS_FIELD].get("x-scope-unused") is True


def test_vace_load_params_are_refused_naming_the_field(server):
    with server.client() as http:
        reply = http.post("/api/v1/pipeline/load", json={"pipeline_id": PIPELINE, "load_params": {**SMALL, "vace_enabled": True}})
        assert reply.status_code == 422, reply.text
        errors = field_errors(Reply(reply.status_code, reply.headers, reply.content))
        assert [loc for loc, _ in errors] == [["body", "load_params", "vace_enabled"]], errors
        assert "extra" in errors[0][1].lower(), errors


def test_the_load_reports_no_warnings_on_cpu(loaded):
    assert loaded["status"] == "loaded", loaded
    assert loaded["pipeline_id"] == PIPELINE and loaded["synthetic"] is True
    assert (loaded["load_params"]["height"], loaded["load_params"]["width"]) == (64, 96)
    assert loaded["load_params"]["quantization"] is None
    assert loaded["warnings"] == []


@pytest.mark.parametrize(
    "params,field,text",
    [
        ({"vace_ref_images": ["ref.png"]}, "vace_ref_images", "does not take VACE"),
        ({BIAS_FIELD: 0}, BIAS_FIELD, "greater than or equal to 0.01"),
        ({BIAS_FIELD: 2}, BIAS_FIELD, "less than or equal to 1"),
    ],
)
def test_offers_with_vace_or_a_bias_out_of_range_get_422_naming_the_field(server, loaded, params, field, text):
    async def offer() -> Reply:
        api = rest(server)
        reply = await ScopeRtcClient(api, recvonly=True).connect({"prompts": ["a fox"], **params}, expect_status=422)
        assert (await api("GET", "api/v1/webrtc/sessions")).json["sessions"] == []
        return reply

    errors = field_errors(asyncio.run(offer()))
    assert [loc[-1] for loc, _ in errors] == [field], errors
    assert text in errors[0][1], errors


def test_a_text_stream_takes_a_new_bias_and_prompt_without_stopping(server, loaded):
    """Frames come at 0.5; the data channel moves the bias to 1.0 and the prompt together, the
    session's parameters show both, and the frames go on. VACE and an out-of-range bias sent on
    the way are refused naming the field, and change nothing."""
    asyncio.run(_stream(rest(server)))


async def frames_unless_stopped(client: ScopeRtcClient, count: int) -> list:
    """The received frames once there are ``count``; fails at once if the session stops."""

    def stopped() -> list[dict]:
        return [m for m in client.messages if m.get("type") == "stream_stopped"]

    await wait_until(lambda n: n >= count or stopped(), 60, f"{count} frames", value=lambda: len(client.frames))
    assert not stopped(), stopped()
    return client.frames


async def _stream(api) -> None:
    initial = {"input_mode": "text", "prompts": ["a red fox"], BIAS_FIELD: 0.5}
    async with connected(api, initial, recvonly=True) as client:

        async def parameters() -> dict:
            sessions = (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]
            return next(s for s in sessions if s["id"] == client.session_id)["parameters"]

        frames = await frames_unless_stopped(client, FIRST_OUTPUT + OUTPUT_PER_CHUNK)
        assert frames[-1].array.shape == (64, 96, 3)
        assert (await parameters())[BIAS_FIELD] == 0.5
        await asyncio.wait_for(client.channel_open.wait(), 10)

        for refused, field, text in (
            ({"vace_ref_images": ["ref.png"]}, "vace_ref_images", "does not take VACE"),
            ({BIAS_FIELD: 2.0}, BIAS_FIELD, "less than or equal to 1"),
        ):
            since = len(client.messages)
            client.send(refused)
            message = await client.peer.wait_message(lambda m: m.get("type") == "parameters_rejected", 30, since)
            assert [e["loc"][-1] for e in message["errors"]] == [field], message
            assert text in message["errors"][0]["msg"], message
        assert (await parameters())[BIAS_FIELD] == 0.5, "a refused update changed the parameters"

        client.send({BIAS_FIELD: 1.0, "prompts": ["a blue whale"]})
        params = await wait_until(lambda p: p[BIAS_FIELD] == 1.0, 30, "the new bias applied", value=parameters)
        assert params["prompts"][0]["text"] == "a blue whale"
        switched = len(client.frames)
        await frames_unless_stopped(client, switched + 2 * OUTPUT_PER_CHUNK)
        stats = await client.wait_message(lambda m: m.get("type") == "stats" and m["chunk"] >= 4, timeout=30)
        assert stats["pipeline_id"] == PIPELINE and stats["state"] == "streaming", stats
        unexpected = [m for m in client.messages if m.get("type") in ("parameters_warning", "stream_stopped")]
        assert not unexpected, unexpected
