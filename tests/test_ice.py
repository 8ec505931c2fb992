"""ICE server provider against real local HTTP fakes of the Cloudflare and Twilio endpoints."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiortc import RTCConfiguration, RTCIceServer
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.web import Application, RequestHandler

from scope.streaming.ice import (
    DEFAULT_STUN_URLS,
    IceServerProvider,
    only_turn_entries,
    to_rtc_ice_servers,
)
from tests.polling import wait_until

STUN_ONLY = [{"urls": list(DEFAULT_STUN_URLS), "username": None, "credential": None}]
#: How long a held answer waits for ``FakeEndpoint.released`` at most.
HOLD_S = 60.0
TWILIO_SID = "AC0123456789abcdef"
TWILIO_TOKEN = "twilio-secret"
TWILIO_PATH = f"/2010-04-01/Accounts/{TWILIO_SID}/Tokens.json"

CLOUDFLARE_BODY = {
    "iceServers": [
        {
            "urls": [
                "stun:stun.cloudflare.com:3478",
                "turn:turn.cloudflare.com:3478?transport=udp",
                "turns:turn.cloudflare.com:443?transport=tcp",
            ],
            "username": "cf-user",
            "credential": "cf-pass",
        }
    ]
}

TWILIO_BODY = {
    "ttl": "1000",
    "ice_servers": [
        {"url": "stun:global.stun.twilio.com:3478", "urls": "stun:global.stun.twilio.com:3478"},
        {
            "url": "turn:global.turn.twilio.com:3478?transport=udp",
            "urls": "turn:global.turn.twilio.com:3478?transport=udp",
            "username": "tw-user",
            "credential": "tw-pass",
        },
        {
            "url": "turn:global.turn.twilio.com:443?transport=tcp",
            "username": "tw-user",
            "credential": "tw-pass",
        },
    ],
}


@dataclass
class RecordedRequest:
    method: str
    uri: str
    headers: dict[str, str]


@dataclass
class FakeEndpoint:
    """What the fake credential server answers, and what it was asked."""

    status: int = 200
    body: Any = field(default_factory=lambda: CLOUDFLARE_BODY)
    delay_s: float = 0.0
    requests: list[RecordedRequest] = field(default_factory=list)
    #: Answers finished (a held request is not answered until ``released`` or ``delay_s``).
    answered: int = 0
    released: asyncio.Event = field(default_factory=asyncio.Event)
    base_url: str = ""

    @property
    def cloudflare_url(self) -> str:
        return f"{self.base_url}/credentials?ttl=600"


class FakeCredentialsHandler(RequestHandler):
    def initialize(self, endpoint: FakeEndpoint) -> None:
        self.endpoint = endpoint

    async def _answer(self) -> None:
        endpoint = self.endpoint
        endpoint.requests.append(
            RecordedRequest(
                self.request.method or "", self.request.uri or "", dict(self.request.headers)
            )
        )
        if endpoint.delay_s:
            try:
                await asyncio.wait_for(endpoint.released.wait(), endpoint.delay_s)
            except TimeoutError:
                pass
        self.set_status(endpoint.status)
        if isinstance(endpoint.body, (bytes, str)):
            self.finish(endpoint.body)
        else:
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(endpoint.body))
        endpoint.answered += 1

    async def get(self) -> None:
        await self._answer()

    async def post(self) -> None:
        await self._answer()


@pytest_asyncio.fixture
async def endpoint() -> AsyncIterator[FakeEndpoint]:
    fake = FakeEndpoint()
    app = Application([(r"/.*", FakeCredentialsHandler, {"endpoint": fake})])
    sock, port = bind_unused_port()
    server = HTTPServer(app)
    server.add_sockets([sock])
    fake.base_url = f"http://127.0.0.1:{port}"
    try:
        yield fake
    finally:
        fake.released.set()
        server.stop()
        await server.close_all_connections()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def cloudflare_provider(endpoint: FakeEndpoint, **kwargs: Any) -> IceServerProvider:
    return IceServerProvider(hf_token="hf_test", cloudflare_url=endpoint.cloudflare_url, **kwargs)


def twilio_provider(endpoint: FakeEndpoint, **kwargs: Any) -> IceServerProvider:
    endpoint.body = TWILIO_BODY
    return IceServerProvider(
        twilio_sid=TWILIO_SID,
        twilio_token=TWILIO_TOKEN,
        twilio_base_url=endpoint.base_url,
        **kwargs,
    )


def refused_url() -> str:
    """A loopback URL on a port nobody listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.asyncio
async def test_no_credentials_advertises_stun_without_any_request(endpoint: FakeEndpoint) -> None:
    provider = IceServerProvider(
        cloudflare_url=endpoint.cloudflare_url, twilio_base_url=endpoint.base_url
    )
    assert provider.provider_name == "stun"
    assert await provider.client_ice_servers() == STUN_ONLY
    assert await provider.turn_servers() == []
    assert endpoint.requests == []


@pytest.mark.asyncio
async def test_twilio_needs_both_sid_and_token(endpoint: FakeEndpoint) -> None:
    provider = IceServerProvider(twilio_sid=TWILIO_SID, twilio_base_url=endpoint.base_url)
    assert await provider.client_ice_servers() == STUN_ONLY
    assert endpoint.requests == []


@pytest.mark.asyncio
async def test_hf_token_fetches_cloudflare_with_bearer(endpoint: FakeEndpoint) -> None:
    provider = cloudflare_provider(endpoint)
    assert provider.provider_name == "cloudflare"
    assert await provider.client_ice_servers() == CLOUDFLARE_BODY["iceServers"]
    [request] = endpoint.requests
    assert request.method == "GET"
    assert request.uri == "/credentials?ttl=600"
    assert request.headers["Authorization"] == "Bearer hf_test"


@pytest.mark.asyncio
async def test_hf_token_wins_over_twilio(endpoint: FakeEndpoint) -> None:
    provider = IceServerProvider(
        hf_token="hf_test",
        twilio_sid=TWILIO_SID,
        twilio_token=TWILIO_TOKEN,
        cloudflare_url=endpoint.cloudflare_url,
        twilio_base_url=endpoint.base_url,
    )
    assert provider.provider_name == "cloudflare"
    await provider.client_ice_servers()
    assert [r.method for r in endpoint.requests] == ["GET"]


@pytest.mark.asyncio
async def test_twilio_token_with_basic_auth(endpoint: FakeEndpoint) -> None:
    provider = twilio_provider(endpoint)
    assert provider.provider_name == "twilio"
    servers = await provider.client_ice_servers()
    assert servers == [
        {"urls": "stun:global.stun.twilio.com:3478", "username": None, "credential": None},
        {
            "urls": "turn:global.turn.twilio.com:3478?transport=udp",
            "username": "tw-user",
            "credential": "tw-pass",
        },
        {
            "urls": "turn:global.turn.twilio.com:443?transport=tcp",
            "username": "tw-user",
            "credential": "tw-pass",
        },
    ]
    [request] = endpoint.requests
    assert request.method == "POST"
    assert request.uri == TWILIO_PATH
    scheme, _, encoded = request.headers["Authorization"].partition(" ")
    assert scheme == "Basic"
    assert base64.b64decode(encoded).decode() == f"{TWILIO_SID}:{TWILIO_TOKEN}"


BAD_ANSWERS = [
    pytest.param(500, {"iceServers": CLOUDFLARE_BODY["iceServers"]}, id="http-500"),
    pytest.param(401, {"error": "unauthorised"}, id="http-401"),
    pytest.param(200, b"<html>not json</html>", id="non-json"),
    pytest.param(200, {"error": "quota exceeded"}, id="error-body"),
    pytest.param(200, {"iceServers": [], "ice_servers": []}, id="empty-list"),
    pytest.param(200, {"iceServers": "turn:x", "ice_servers": "turn:x"}, id="not-a-list"),
    pytest.param(200, {"iceServers": [{"username": "u"}], "ice_servers": [{}]}, id="no-urls"),
    pytest.param(200, [1, 2, 3], id="json-array"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize("status, body", BAD_ANSWERS)
@pytest.mark.parametrize(
    "make_provider", [cloudflare_provider, twilio_provider], ids=["cloudflare", "twilio"]
)
async def test_bad_answers_fall_back_to_stun(
    endpoint: FakeEndpoint, make_provider: Any, status: int, body: Any
) -> None:
    provider = make_provider(endpoint)
    endpoint.status, endpoint.body = status, body
    assert await provider.client_ice_servers() == STUN_ONLY
    assert await provider.turn_servers() == []
    assert len(endpoint.requests) == 1


@pytest.mark.asyncio
async def test_connection_refused_falls_back_to_stun() -> None:
    cloudflare = IceServerProvider(
        hf_token="hf_test", cloudflare_url=f"{refused_url()}/credentials"
    )
    twilio = IceServerProvider(
        twilio_sid=TWILIO_SID, twilio_token=TWILIO_TOKEN, twilio_base_url=refused_url()
    )
    assert await cloudflare.client_ice_servers() == STUN_ONLY
    assert await twilio.client_ice_servers() == STUN_ONLY


@pytest.mark.asyncio
async def test_slow_endpoint_is_cut_off_by_the_timeout(endpoint: FakeEndpoint) -> None:
    endpoint.delay_s = HOLD_S  # answers only once released
    provider = cloudflare_provider(endpoint, timeout_s=0.1)
    assert await asyncio.wait_for(provider.client_ice_servers(), HOLD_S / 2) == STUN_ONLY
    assert len(endpoint.requests) == 1
    assert endpoint.answered == 0, "the provider gave up before the endpoint answered"


@pytest.mark.asyncio
async def test_credentials_are_cached(endpoint: FakeEndpoint) -> None:
    provider = cloudflare_provider(endpoint)
    first = await provider.client_ice_servers()
    second = await provider.client_ice_servers()
    turn = await provider.turn_servers()
    assert first == second
    assert turn
    assert len(endpoint.requests) == 1


@pytest.mark.asyncio
async def test_returned_lists_do_not_alias_the_cache(endpoint: FakeEndpoint) -> None:
    provider = cloudflare_provider(endpoint)
    servers = await provider.client_ice_servers()
    servers[0]["urls"].clear()
    servers.clear()
    assert await provider.client_ice_servers() == CLOUDFLARE_BODY["iceServers"]


@pytest.mark.asyncio
async def test_cloudflare_refreshes_before_the_requested_ttl(endpoint: FakeEndpoint) -> None:
    clock = FakeClock()
    provider = cloudflare_provider(endpoint, clock=clock)
    await provider.client_ice_servers()
    # ttl=600 s: refresh once less than max(20 %, 60 s) = 120 s remain, i.e. after 480 s.
    clock.now += 479
    await provider.client_ice_servers()
    assert len(endpoint.requests) == 1
    clock.now += 2
    await provider.client_ice_servers()
    assert len(endpoint.requests) == 2


@pytest.mark.asyncio
async def test_cloudflare_ttl_follows_the_url(endpoint: FakeEndpoint) -> None:
    clock = FakeClock()
    provider = IceServerProvider(
        hf_token="hf_test", cloudflare_url=f"{endpoint.base_url}/credentials?ttl=120", clock=clock
    )
    await provider.client_ice_servers()
    # ttl=120 s: the 60 s minimum margin applies, so refresh after 60 s.
    clock.now += 59
    await provider.client_ice_servers()
    assert len(endpoint.requests) == 1
    clock.now += 2
    await provider.client_ice_servers()
    assert len(endpoint.requests) == 2


@pytest.mark.asyncio
async def test_twilio_refreshes_before_its_ttl(endpoint: FakeEndpoint) -> None:
    clock = FakeClock()
    provider = twilio_provider(endpoint, clock=clock)
    await provider.client_ice_servers()
    # ttl "1000": refresh once less than 200 s remain, i.e. after 800 s.
    clock.now += 799
    await provider.turn_servers()
    assert len(endpoint.requests) == 1
    clock.now += 2
    await provider.turn_servers()
    assert len(endpoint.requests) == 2


@pytest.mark.asyncio
async def test_failure_is_retried_after_a_short_pause(endpoint: FakeEndpoint) -> None:
    clock = FakeClock()
    provider = cloudflare_provider(endpoint, clock=clock, failure_retry_s=30)
    endpoint.status = 503
    assert await provider.client_ice_servers() == STUN_ONLY
    clock.now += 10
    assert await provider.client_ice_servers() == STUN_ONLY
    assert len(endpoint.requests) == 1
    endpoint.status = 200
    clock.now += 21
    assert await provider.client_ice_servers() == CLOUDFLARE_BODY["iceServers"]
    assert len(endpoint.requests) == 2


@pytest.mark.asyncio
async def test_failed_refresh_keeps_credentials_until_they_expire(endpoint: FakeEndpoint) -> None:
    clock = FakeClock()
    provider = cloudflare_provider(endpoint, clock=clock, failure_retry_s=30)
    good = await provider.client_ice_servers()
    endpoint.status = 500
    clock.now += 500  # inside the refresh window, still 100 s before expiry
    assert await provider.client_ice_servers() == good
    assert len(endpoint.requests) == 2
    clock.now += 29
    assert await provider.client_ice_servers() == good
    assert len(endpoint.requests) == 2
    clock.now += 2  # retry, fails again; 69 s left
    assert await provider.client_ice_servers() == good
    assert len(endpoint.requests) == 3
    clock.now += 70  # past expiry: expired credentials are never served
    assert await provider.client_ice_servers() == STUN_ONLY
    assert len(endpoint.requests) == 4


async def wait_for_requests(endpoint: FakeEndpoint, count: int) -> None:
    await wait_until(lambda: len(endpoint.requests) >= count, what=f"{count} request(s) at the fake endpoint")


@pytest.mark.asyncio
async def test_concurrent_callers_share_one_fetch(endpoint: FakeEndpoint) -> None:
    endpoint.delay_s = HOLD_S
    provider = cloudflare_provider(endpoint, timeout_s=HOLD_S)
    callers = asyncio.gather(
        *(provider.client_ice_servers() for _ in range(10)),
        *(provider.turn_servers() for _ in range(5)),
    )
    await wait_for_requests(endpoint, 1)
    endpoint.released.set()
    results = await callers
    assert all(result == CLOUDFLARE_BODY["iceServers"] for result in results[:10])
    assert all(result and result == results[10] for result in results[10:])
    assert len(endpoint.requests) == 1


@pytest.mark.asyncio
async def test_cancelled_caller_does_not_cancel_the_shared_fetch(endpoint: FakeEndpoint) -> None:
    endpoint.delay_s = HOLD_S
    provider = cloudflare_provider(endpoint, timeout_s=HOLD_S)
    impatient = asyncio.ensure_future(provider.client_ice_servers())
    patient = asyncio.ensure_future(provider.client_ice_servers())
    await wait_for_requests(endpoint, 1)
    impatient.cancel()
    endpoint.released.set()
    assert await patient == CLOUDFLARE_BODY["iceServers"]
    assert impatient.cancelled()
    assert len(endpoint.requests) == 1


@pytest.mark.asyncio
async def test_failure_logs_a_warning_without_the_token(
    endpoint: FakeEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint.status = 500
    provider = cloudflare_provider(endpoint)
    with caplog.at_level(logging.WARNING, logger="scope.streaming.ice"):
        await provider.client_ice_servers()
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "cloudflare" in record.getMessage()
    assert "hf_test" not in caplog.text


@pytest.mark.asyncio
async def test_turn_servers_keeps_only_turn_urls(endpoint: FakeEndpoint) -> None:
    provider = cloudflare_provider(endpoint)
    assert await provider.turn_servers() == [
        {
            "urls": [
                "turn:turn.cloudflare.com:3478?transport=udp",
                "turns:turn.cloudflare.com:443?transport=tcp",
            ],
            "username": "cf-user",
            "credential": "cf-pass",
        }
    ]
    twilio = twilio_provider(endpoint)
    assert [entry["urls"] for entry in await twilio.turn_servers()] == [
        "turn:global.turn.twilio.com:3478?transport=udp",
        "turn:global.turn.twilio.com:443?transport=tcp",
    ]


def test_only_turn_entries_drops_stun_only_entries() -> None:
    entries = [
        {"urls": "stun:a:3478", "username": None, "credential": None},
        {"urls": ["stun:b:3478"], "username": None, "credential": None},
        {"urls": ["TURNS:c:443"], "username": "u", "credential": "p"},
    ]
    assert only_turn_entries(entries) == [
        {"urls": ["TURNS:c:443"], "username": "u", "credential": "p"}
    ]


def test_to_rtc_ice_servers_feeds_an_rtc_configuration() -> None:
    servers = to_rtc_ice_servers(
        [
            {"urls": ["turn:t:3478"], "username": "u", "credential": "p"},
            {"urls": "stun:s:3478", "username": None, "credential": None},
        ]
    )
    assert servers == [
        RTCIceServer(urls=["turn:t:3478"], username="u", credential="p"),
        RTCIceServer(urls="stun:s:3478"),
    ]
    assert RTCConfiguration(iceServers=servers).iceServers == servers


def test_from_env_reads_the_documented_variables() -> None:
    assert IceServerProvider.from_env({}).provider_name == "stun"
    assert IceServerProvider.from_env({"HF_TOKEN": ""}).provider_name == "stun"
    assert IceServerProvider.from_env({"HF_TOKEN": "hf"}).provider_name == "cloudflare"
    twilio_env = {"TWILIO_ACCOUNT_SID": TWILIO_SID, "TWILIO_AUTH_TOKEN": TWILIO_TOKEN}
    assert IceServerProvider.from_env(twilio_env).provider_name == "twilio"
    assert IceServerProvider.from_env({"TWILIO_ACCOUNT_SID": TWILIO_SID}).provider_name == "stun"


def test_from_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", TWILIO_SID)
    monkeypatch.setenv("TWILIO_AUTH_TOKEN", TWILIO_TOKEN)
    assert IceServerProvider.from_env().provider_name == "twilio"


@pytest.mark.asyncio
async def test_custom_stun_fallback() -> None:
    provider = IceServerProvider(stun_fallback="stun:stun.example.org:3478")
    assert await provider.client_ice_servers() == [
        {"urls": ["stun:stun.example.org:3478"], "username": None, "credential": None}
    ]
