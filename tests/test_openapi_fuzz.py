"""Schema fuzzing: every operation, fed generated valid and invalid requests, stays inside its document.

The OpenAPI document is built in this process from the same handler list the server mounts (and
checked to equal the one the server serves), so the operations are known when pytest collects.
Each operation runs a bounded number of examples against a real ``daydream-scope`` on loopback
with temporary directories and the local fake hub; an answer that is a server error, or whose
status, content type or body the document does not describe, fails the test. A documented
server status is an answer like any other: the offer's example SDP is usable, so offers built from
it fill the pending-offer slots and get the documented 503. Hypothesis runs derandomized, so a run
is reproducible.
"""

from __future__ import annotations

import collections
from typing import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scope.server_ext.openapi import build_openapi
from scope.server_ext.routes import HANDLERS
from tests._subprocess_server import ScopeServer, running_scope_server
from tests.fakehub import FakeHub
from tests.polling import wait_until_sync

SCHEMA = schemathesis.openapi.from_dict(build_openapi(HANDLERS))
CHECKS = [
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

#: Examples per operation: enough to reach every branch of these small bodies, bounded so the
#: whole module stays within about two minutes.
EXAMPLES = 400
#: Operations whose side effects are heavy get fewer examples (each starts a load, a download or a render).
HEAVY = {
    "POST /api/v1/pipeline/load": 100,
    "POST /api/v1/models/download": 100,
    "POST /api/v1/webrtc/offer": 150,
    "POST /api/v1/render": 100,
    "POST /api/v1/websocket/offer": 150,
    "POST /api/v1/session/start": 100,
}
#: A live stream that only ends with its session: fuzzed with no headless session running (a
#: fuzzed start may have opened one), so it answers its 404 instead of streaming until the timeout.
ENDLESS = "GET /api/v1/session/output.ts"


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory) -> Iterator[ScopeServer]:
    """A ``daydream-scope`` whose downloads go to a local (empty) hub."""
    with FakeHub() as hub, running_scope_server(
        tmp_path_factory.mktemp("fuzz-server"), env={"HF_ENDPOINT": hub.endpoint}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def tally() -> Iterator[collections.Counter]:
    counts: collections.Counter = collections.Counter()
    yield counts
    print(
        f"\nschema fuzz: {counts['requests']} requests, {counts['server_errors']} server errors, "
        f"{counts['violations']} violations; statuses {dict(sorted(counts['statuses'].items()))}"
    )


@pytest.fixture(scope="module", autouse=True)
def _tally_statuses(tally):
    tally["statuses"] = collections.Counter()


def test_served_document_is_the_one_fuzzed(fuzz_server):
    with fuzz_server.client() as client:
        served = client.get("/openapi.json").json()
    assert served == SCHEMA.raw_schema


@SCHEMA.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_operation_keeps_to_its_document(case, fuzz_server, tally, request):
    label = f"{case.operation.method.upper()} {case.operation.path}"
    limit = HEAVY.get(label)
    if limit is not None and tally[label] >= limit:
        return
    tally[label] += 1
    if label == ENDLESS:
        httpx.post(fuzz_server.url.rstrip("/") + "/api/v1/session/stop", json={}, timeout=30)
    response = case.call(base_url=fuzz_server.url, timeout=30)
    tally["requests"] += 1
    tally["statuses"][response.status_code] += 1
    if response.status_code >= 500:
        tally["server_errors"] += 1
    try:
        documented = case.operation.definition.raw["responses"]
        assert response.status_code < 500 or str(response.status_code) in documented, (
            f"{label}: undocumented server error {response.status_code}: {response.text[:2000]}"
        )
        case.validate_response(response, checks=CHECKS)
    except Exception:
        tally["violations"] += 1
        raise


def test_server_survived_the_fuzz(fuzz_server):
    """After every operation was fuzzed the server still answers and streams nothing stray.

    Offers whose peer (or socket) never connects wait out the connect timeout (10 s), then must be gone.
    """
    with fuzz_server.client() as client:
        assert client.get("/health").json()["status"] == "healthy"
        client.post("/api/v1/session/stop", json={})  # a fuzzed start may have opened it
        wait_until_sync(
            lambda sessions: sessions == [],
            60,
            "the fuzzed offers' sessions to end",
            value=lambda: client.get("/api/v1/webrtc/sessions").json()["sessions"],
        )
    assert "Traceback" not in fuzz_server.output(), fuzz_server.output()[-4000:]


def test_fuzz_reaches_every_operation(tally):
    operations = {
        f"{method.upper()} {path}"
        for path, item in SCHEMA.raw_schema["paths"].items()
        for method in item
    }
    reached = {label for label in tally if isinstance(label, str) and label.startswith(("GET ", "POST ", "PATCH ", "DELETE "))}
    assert operations <= reached, sorted(operations - reached)
