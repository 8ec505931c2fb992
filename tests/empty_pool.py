"""Return a shared test server's pipeline pool to empty, so the next test starts from nothing.

Unloading only the current pipeline (the spec's call) leaves the rest of the pool loaded, and
failed loads listed: each entry is unloaded, or dismissed, by naming it.
"""

from __future__ import annotations

import httpx

from tests.polling import wait_until_sync

STATUS, UNLOAD = "api/v1/pipeline/status", "api/v1/pipeline/unload"


def empty_pool(client: httpx.Client, timeout: float = 60.0) -> None:
    """Unload every pipeline of the pool (after the caller ended the sessions) and wait until
    none is listed and none is current. A loading one is unloaded once its load has finished."""

    def pipelines_left() -> list[dict]:
        pipelines = client.get(STATUS).json()["pipelines"]
        for entry in pipelines:
            if entry["status"] == "loading" or entry["unload_when_idle"]:
                continue  # unloads once its load, or its last session, has ended
            body = {"pipeline_id": entry["pipeline_id"], "load_params": entry["load_params"]}
            reply = client.post(UNLOAD, json=body)
            # 404: it left meanwhile (its last session ended).
            assert reply.status_code in (200, 404), reply.text
        return pipelines

    wait_until_sync(lambda pipelines: not pipelines, timeout, "an empty pipeline pool", value=pipelines_left)
    # A failed current load, dismissed above, still names the current pipeline: the spec's unload clears it.
    assert client.post(UNLOAD, json={}).status_code == 200
    assert client.get(STATUS).json()["status"] == "not_loaded"
