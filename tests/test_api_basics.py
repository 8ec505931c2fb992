"""Health, hardware, docs, OpenAPI, schemas and logs against a real server on loopback."""

from __future__ import annotations

import pytest
from openapi_spec_validator import validate

pytestmark = pytest.mark.usefixtures("jp_serverapp")


async def test_health(api):
    reply = await api("GET", "health")
    assert reply.status == 200
    body = reply.json
    assert body["status"] == "healthy"
    assert "T" in body["timestamp"]


async def test_hardware_info_has_documented_and_extra_fields(api):
    info = (await api("GET", "api/v1/hardware/info")).json
    assert set(info) >= {"vram_gb", "spout_available", "device_name", "cuda_available", "ram_gb"}
    assert info["spout_available"] is False
    assert info["ram_gb"] > 0
    if not info["cuda_available"]:
        assert info["vram_gb"] is None and info["device_name"] == "cpu"


async def test_openapi_document_is_valid_and_covers_every_endpoint(api):
    reply = await api("GET", "openapi.json")
    assert reply.status == 200
    spec = reply.json
    validate(spec)
    assert spec["openapi"].startswith("3.1")
    assert spec["info"]["title"] == "Scope"
    expected = {
        ("/health", "get"), ("/api/v1/hardware/info", "get"), ("/api/v1/pipeline/load", "post"),
        ("/api/v1/pipeline/unload", "post"), ("/api/v1/pipeline/status", "get"),
        ("/api/v1/pipelines/schemas", "get"), ("/api/v1/models/status", "get"),
        ("/api/v1/models/download", "post"), ("/api/v1/webrtc/ice-servers", "get"),
        ("/api/v1/webrtc/offer", "post"), ("/api/v1/webrtc/offer/{session_id}", "patch"),
        ("/api/v1/webrtc/sessions", "get"), ("/api/v1/webrtc/sessions/{session_id}", "delete"),
        ("/api/v1/assets", "get"), ("/api/v1/assets", "post"), ("/api/v1/assets/{asset_path}", "get"),
        ("/api/v1/lora/list", "get"), ("/api/v1/logs/current", "get"),
        ("/api/v1/loras", "get"), ("/api/v1/loras", "post"), ("/api/v1/loras/upload", "post"),
        ("/api/v1/loras/{name}", "delete"),
    }
    present = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert expected <= present
    load = spec["paths"]["/api/v1/pipeline/load"]["post"]
    schema_ref = load["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert schema_ref.endswith("/LoadRequest")
    assert "pipeline_id" in spec["components"]["schemas"]["LoadRequest"]["properties"]
    offer = spec["components"]["schemas"]["OfferRequest"]["properties"]["initialParameters"]
    assert "InitialParameters" in str(offer)
    initial = spec["components"]["schemas"]["InitialParameters"]
    assert {"prompts", "transition", "input_mode"} <= set(initial["properties"])


async def test_swagger_ui_is_served_offline(api):
    page = await api("GET", "docs")
    assert page.status == 200
    html = page.body.decode()
    assert "swagger-ui-bundle.js" in html and "openapi.json" in html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "swagger-ui-standalone-preset.js"):
        reply = await api("GET", f"docs/static/{asset}")
        assert reply.status == 200 and len(reply.body) > 1000


async def test_schemas_list_passthrough_with_generated_schemas(api):
    schemas = (await api("GET", "api/v1/pipelines/schemas")).json["pipelines"]
    assert "passthrough" in schemas
    entry = schemas["passthrough"]
    keys = list(entry)
    assert keys[:4] == ["id", "name", "description", "version"]
    assert entry["supported_modes"] == ["video"] and entry["default_mode"] == "video"
    assert entry["supports_prompts"] is False and entry["requires_models"] is False
    assert "mode_defaults" not in entry
    config = entry["config_schema"]
    assert config["additionalProperties"] is False
    assert set(config["properties"]) == {
        "height", "width", "manage_cache", "base_seed", "denoising_steps", "noise_scale",
        "noise_controller", "input_size", "ref_images", "vace_context_scale",
    }
    assert entry["load_params_schema"]["properties"]["height"]["default"] == 512
    params = entry["parameters_schema"]["properties"]
    assert {"prompts", "transition", "paused", "denoising_step_list"} <= set(params)


async def test_schemas_include_registered_test_pipeline(api, test_pipelines):
    schemas = (await api("GET", "api/v1/pipelines/schemas")).json["pipelines"]
    entry = schemas["test-pattern"]
    assert entry["mode_defaults"] == {"video": {"height": 64, "width": 64, "noise_scale": 0.7, "noise_controller": True}}
    assert entry["load_params_schema"]["additionalProperties"] is False


async def test_unknown_get_path_is_404_and_jupyter_api_is_not_shadowed(api):
    assert (await api("GET", "api/v1/whatever")).status == 404
    # Jupyter's own API still answers (the token is required there).
    assert (await api("GET", "api/kernels")).status == 403


async def test_current_log(api):
    reply = await api("GET", "api/v1/logs/current")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert 'filename="scope-logs-' in reply.headers["Content-Disposition"]
    assert ".txt" in reply.headers["Content-Disposition"]
    assert "Scope server log" in reply.body.decode()


async def test_ice_servers_default_to_stun(api):
    reply = await api("GET", "api/v1/webrtc/ice-servers")
    servers = reply.json["iceServers"]
    assert servers, "never an empty list"
    assert servers[0]["urls"] == ["stun:stun.l.google.com:19302"]
    assert servers[0]["username"] is None and servers[0]["credential"] is None
