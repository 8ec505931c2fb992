"""ICE servers: what browsers are told to use, and which TURN relays the server itself may use.

Browsers behind restrictive NATs need a TURN relay to reach the server, and TURN needs
short-lived credentials. They come from the Cloudflare TURN service (through the fastrtc
endpoint, authorised by ``HF_TOKEN``) or from Twilio's Network Traversal Service. Both are
fetched lazily, cached for their lifetime and refreshed before they expire, so a long-running
server never hands out dead credentials. Any failure falls back to a public STUN server: the
advertised list is never empty, and a dead endpoint costs at most one short timeout.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from aiortc import RTCIceServer

from scope.config import setting_default

logger = logging.getLogger(__name__)

# The endpoints and the STUN fallback are settings; their defaults are defined there.
CLOUDFLARE_CREDENTIALS_URL: str = setting_default("cloudflare_turn_url")
TWILIO_BASE_URL: str = setting_default("twilio_base_url")
DEFAULT_STUN_URLS: tuple[str, ...] = (setting_default("stun_fallback"),)

DEFAULT_TIMEOUT_S = 5.0
DEFAULT_CLOUDFLARE_TTL_S = 600.0
DEFAULT_TWILIO_TTL_S = 600.0
FAILURE_RETRY_S = 30.0
REFRESH_FRACTION = 0.2
MIN_REFRESH_MARGIN_S = 60.0

TURN_SCHEMES = ("turn:", "turns:")

IceServerEntry = dict[str, Any]


class IceCredentialsError(Exception):
    """A TURN credential endpoint answered with something unusable."""


@dataclass(frozen=True)
class _CachedServers:
    """A fetched list together with when to fetch again and when it stops being valid."""

    servers: list[IceServerEntry]
    refresh_at: float
    expires_at: float


class IceServerProvider:
    """Fetches, caches and refreshes TURN credentials; falls back to STUN on any failure.

    Provider order: ``hf_token`` selects Cloudflare, else ``twilio_sid`` plus
    ``twilio_token`` select Twilio, else only the STUN fallback is advertised.
    Concurrent callers share a single in-flight fetch.
    """

    def __init__(
        self,
        hf_token: str | None = None,
        twilio_sid: str | None = None,
        twilio_token: str | None = None,
        *,
        cloudflare_url: str = CLOUDFLARE_CREDENTIALS_URL,
        twilio_base_url: str = TWILIO_BASE_URL,
        stun_fallback: str | Sequence[str] = DEFAULT_STUN_URLS,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        failure_retry_s: float = FAILURE_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hf_token = hf_token or None
        self._twilio_sid = twilio_sid or None
        self._twilio_token = twilio_token or None
        self._cloudflare_url = cloudflare_url
        self._twilio_base_url = twilio_base_url.rstrip("/")
        self._stun_urls = [stun_fallback] if isinstance(stun_fallback, str) else list(stun_fallback)
        self._timeout_s = timeout_s
        self._failure_retry_s = failure_retry_s
        self._clock = clock
        self._cached: _CachedServers | None = None
        self._inflight: asyncio.Task[_CachedServers] | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **kwargs: Any) -> IceServerProvider:
        """Build from ``HF_TOKEN``, ``TWILIO_ACCOUNT_SID`` and ``TWILIO_AUTH_TOKEN``."""
        env = os.environ if environ is None else environ
        return cls(
            hf_token=env.get("HF_TOKEN") or None,
            twilio_sid=env.get("TWILIO_ACCOUNT_SID") or None,
            twilio_token=env.get("TWILIO_AUTH_TOKEN") or None,
            **kwargs,
        )

    @property
    def provider_name(self) -> str:
        """``"cloudflare"``, ``"twilio"`` or ``"stun"``: which source the credentials come from."""
        if self._hf_token:
            return "cloudflare"
        if self._twilio_sid and self._twilio_token:
            return "twilio"
        return "stun"

    async def client_ice_servers(self) -> list[IceServerEntry]:
        """The list advertised to browsers: TURN credentials if any, else STUN; never empty."""
        if self.provider_name == "stun":
            return self._stun_entries()
        cached = await self._current()
        return copy.deepcopy(cached.servers)

    async def turn_servers(self) -> list[IceServerEntry]:
        """Only the TURN relays of the advertised list, for the server's own peer connections.

        STUN is left out on purpose: an unreachable STUN host would delay every answer.
        """
        return only_turn_entries(await self.client_ice_servers())

    async def _current(self) -> _CachedServers:
        cached = self._cached
        if cached is not None and self._clock() < cached.refresh_at:
            return cached
        if self._inflight is None:
            self._inflight = asyncio.ensure_future(self._refresh(cached))
            self._inflight.add_done_callback(self._forget_inflight)
        # Shielded so that a caller giving up (client disconnect) does not cancel the
        # fetch other callers are waiting on.
        return await asyncio.shield(self._inflight)

    def _forget_inflight(self, task: asyncio.Task[_CachedServers]) -> None:
        if self._inflight is task:
            self._inflight = None

    async def _refresh(self, previous: _CachedServers | None) -> _CachedServers:
        started = self._clock()
        try:
            async with asyncio.timeout(self._timeout_s):
                servers, ttl_s = await self._fetch()
        except Exception as exc:  # noqa: BLE001 - any failure must degrade to STUN, never raise
            self._cached = self._after_failure(previous, started, exc)
        else:
            margin = max(ttl_s * REFRESH_FRACTION, MIN_REFRESH_MARGIN_S)
            usable_s = ttl_s - margin if ttl_s > margin else ttl_s / 2
            self._cached = _CachedServers(servers, started + usable_s, started + ttl_s)
            logger.info(
                "Fetched %d ICE server entries from %s (ttl %.0f s)",
                len(servers),
                self.provider_name,
                ttl_s,
            )
        return self._cached

    def _after_failure(
        self, previous: _CachedServers | None, now: float, exc: BaseException
    ) -> _CachedServers:
        retry_at = now + self._failure_retry_s
        if previous is not None and now < previous.expires_at:
            logger.warning(
                "Refreshing %s TURN credentials failed (%s); keeping the current ones until "
                "they expire",
                self.provider_name,
                _describe(exc),
            )
            refresh_at = min(retry_at, previous.expires_at)
            return _CachedServers(previous.servers, refresh_at, previous.expires_at)
        logger.warning(
            "Fetching %s TURN credentials failed (%s); advertising STUN only, retrying in %.0f s",
            self.provider_name,
            _describe(exc),
            self._failure_retry_s,
        )
        return _CachedServers(self._stun_entries(), retry_at, retry_at)

    async def _fetch(self) -> tuple[list[IceServerEntry], float]:
        async with httpx.AsyncClient(timeout=self._timeout_s) as client:
            if self._hf_token:
                return await self._fetch_cloudflare(client)
            return await self._fetch_twilio(client)

    async def _fetch_cloudflare(
        self, client: httpx.AsyncClient
    ) -> tuple[list[IceServerEntry], float]:
        response = await client.get(
            self._cloudflare_url, headers={"Authorization": f"Bearer {self._hf_token}"}
        )
        body = _json_object(response)
        servers = normalise_entries(body.get("iceServers"))
        return servers, _requested_ttl(self._cloudflare_url)

    async def _fetch_twilio(self, client: httpx.AsyncClient) -> tuple[list[IceServerEntry], float]:
        url = f"{self._twilio_base_url}/2010-04-01/Accounts/{self._twilio_sid}/Tokens.json"
        response = await client.post(url, auth=(self._twilio_sid or "", self._twilio_token or ""))
        body = _json_object(response)
        servers = normalise_entries(body.get("ice_servers"))
        return servers, _positive_seconds(body.get("ttl"), DEFAULT_TWILIO_TTL_S)

    def _stun_entries(self) -> list[IceServerEntry]:
        return [{"urls": list(self._stun_urls), "username": None, "credential": None}]


def normalise_entries(raw: Any) -> list[IceServerEntry]:
    """Turn a provider's server list into ``{urls, username, credential}`` entries.

    Accepts ``urls`` or Twilio's singular ``url``; drops entries without a usable URL.
    Raises :class:`IceCredentialsError` when nothing usable is left, so the caller falls back.
    """
    if not isinstance(raw, list):
        raise IceCredentialsError(f"expected a list of ICE servers, got {type(raw).__name__}")
    entries = [entry for entry in map(_normalise_entry, raw) if entry is not None]
    if not entries:
        raise IceCredentialsError("the ICE server list is empty")
    return entries


def _normalise_entry(raw: Any) -> IceServerEntry | None:
    if not isinstance(raw, Mapping):
        return None
    urls = raw.get("urls") or raw.get("url")
    if isinstance(urls, list):
        urls = [url for url in urls if isinstance(url, str) and url]
    elif not isinstance(urls, str):
        urls = None
    if not urls:
        return None
    return {
        "urls": urls,
        "username": _optional_str(raw.get("username")),
        "credential": _optional_str(raw.get("credential")),
    }


def only_turn_entries(entries: Iterable[IceServerEntry]) -> list[IceServerEntry]:
    """Keep only ``turn:``/``turns:`` URLs; entries left with none are dropped."""
    result: list[IceServerEntry] = []
    for entry in entries:
        urls = entry["urls"]
        if isinstance(urls, str):
            if _is_turn(urls):
                result.append(dict(entry))
            continue
        turn_urls = [url for url in urls if _is_turn(url)]
        if turn_urls:
            result.append({**entry, "urls": turn_urls})
    return result


def to_rtc_ice_servers(entries: Iterable[IceServerEntry]) -> list[RTCIceServer]:
    """Convert normalised entries to aiortc's ``RTCIceServer`` for an ``RTCConfiguration``."""
    return [
        RTCIceServer(
            urls=entry["urls"],
            username=entry.get("username"),
            credential=entry.get("credential"),
        )
        for entry in entries
    ]


def _is_turn(url: str) -> bool:
    return url.lower().startswith(TURN_SCHEMES)


def _optional_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _json_object(response: httpx.Response) -> Mapping[str, Any]:
    response.raise_for_status()
    body = response.json()
    if not isinstance(body, Mapping):
        raise IceCredentialsError(f"expected a JSON object, got {type(body).__name__}")
    return body


def _requested_ttl(url: str) -> float:
    """The lifetime asked for in the URL's ``ttl`` query parameter (Cloudflare honours it)."""
    values = parse_qs(urlsplit(url).query).get("ttl")
    return _positive_seconds(values[0] if values else None, DEFAULT_CLOUDFLARE_TTL_S)


def _positive_seconds(value: Any, default: float) -> float:
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return default
    return seconds if math.isfinite(seconds) and seconds > 0 else default


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
