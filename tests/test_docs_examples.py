"""The request bodies ``/docs`` fills in for "Try it out" succeed as they are.

Each example is read from the served OpenAPI document (where Swagger UI reads it) and sent
unchanged, in the order a person trying the API would go: load, download, offer, trickle, install a LoRA,
render (the download's synthetic weights), unload. Path
parameters are taken from earlier answers, as a person copies the session id from the offer.
"""

from __future__ import annotations

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.usefixtures("jp_serverapp")

#: Every operation with a JSON body, in the order they can be tried; a new one must be placed here.
TRY_ORDER = [
    ("post", "/api/v1/pipeline/load"),
    ("post", "/api/v1/models/download"),
    ("post", "/api/v1/webrtc/offer"),
    ("patch", "/api/v1/webrtc/offer/{session_id}"),
    ("post", "/api/v1/loras"),
    ("post", "/api/v1/websocket/offer"),
    ("post", "/api/v1/render"),
    ("post", "/api/v1/session/start"),
    ("post", "/api/v1/session/parameters"),
    ("post", "/api/v1/pipeline/unload"),
]


def success_status(operation: dict) -> int:
    [status] = [int(code) for code in operation["responses"] if code.startswith("2")]
    return status


async def test_every_request_body_example_succeeds_as_is(api):
    document = (await api("GET", "openapi.json")).json
    bodies = {
        (method, path): operation["requestBody"]["content"]
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "requestBody" in operation
    }
    # The uploads' bodies are files chosen in Swagger UI's file picker, not JSON examples.
    files = {key: content for key, content in bodies.items() if "application/json" not in content}
    binary = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
    assert files == {("post", "/api/v1/assets"): binary, ("post", "/api/v1/loras/upload"): binary}
    assert sorted(key for key in bodies if key not in files) == sorted(TRY_ORDER)

    filled: dict[str, str] = {}
    try:
        for method, path in TRY_ORDER:
            example = bodies[(method, path)]["application/json"]["example"]
            reply = await api(method.upper(), path.format(**filled), example)
            expected = success_status(document["paths"][path][method])
            assert reply.status == expected, f"{method.upper()} {path}: {reply.status} {reply.body[:500]!r}"
            if path == "/api/v1/pipeline/load":

                async def pipeline() -> dict:
                    return (await api("GET", "api/v1/pipeline/status")).json

                status = await wait_until(lambda s: s["status"] != "loading", 60, "the example's load", value=pipeline)
                assert status["status"] == "loaded", status
            elif path == "/api/v1/models/download":
                pipeline_id = example["pipeline_id"]

                async def models() -> dict:
                    return (await api("GET", f"api/v1/models/status?pipeline_id={pipeline_id}")).json

                status = await wait_until(lambda s: s["downloaded"], 60, "the example's download", value=models)
                assert status["synthetic"] is example["synthetic"]
            elif path == "/api/v1/webrtc/offer":
                assert reply.json["type"] == "answer"
                filled["session_id"] = reply.json["sessionId"]
            elif path == "/api/v1/websocket/offer":
                assert reply.json["url"] == f"api/v1/websocket/{reply.json['sessionId']}"
                filled["socket_session_id"] = reply.json["sessionId"]
            elif path == "/api/v1/session/start":
                filled["headless"] = reply.json["session_id"]
            elif path == "/api/v1/render":
                job = f"api/v1/render/{reply.json['job_id']}"
                assert reply.json["url"].endswith("/" + job)  # under the server's base URL

                async def render() -> dict:
                    return (await api("GET", job)).json

                status = await wait_until(lambda s: s["status"] not in ("queued", "loading", "rendering"), 120, "the example's render", value=render)
                assert status["status"] == "done", status
                assert status["progress"]["chunks_done"] == example["timeline"]["length_chunks"]
    finally:
        for key in ("session_id", "socket_session_id", "headless"):
            if key in filled:
                await api("DELETE", f"api/v1/webrtc/sessions/{filled[key]}")

    async def sessions() -> list:
        return (await api("GET", "api/v1/webrtc/sessions")).json["sessions"]

    await wait_until(lambda s: s == [], 20, "the example session to end", value=sessions)
