"""Which local addresses this process's ICE agents use, and which remote ones they may check.

aioice offers a host candidate on every interface address except loopback. Restricting the
addresses (``ScopeApp.ice_host_addresses``, or ``DAYDREAM_SCOPE_ICE_HOST_ADDRESSES`` for a client
process) replaces aioice's address discovery for every peer connection of this process; an empty
list restores it. When every allowed address is loopback, remote candidates that are not
loopback are dropped too (from offers and trickled candidates), and checks arriving from other
addresses go unanswered (they would otherwise become peer-reflexive candidates the agent checks
back), so no connectivity check, and no mDNS lookup, goes to any other address.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable, Mapping

from aioice import ice as aioice_ice

ENV_VAR = "DAYDREAM_SCOPE_ICE_HOST_ADDRESSES"

#: aioice's own discovery and check handling, used whenever no restriction is set.
_discover_every_interface = aioice_ice.get_host_addresses
_answer_check = aioice_ice.Connection.request_received
_allowed: tuple[str, ...] = ()


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        raise ValueError(f"ICE host address {text!r} is not an IP address") from None


def restrict_host_addresses(addresses: Iterable[str]) -> None:
    """Gather host candidates on ``addresses`` only (loopback allowed); empty: every interface."""
    global _allowed
    _allowed = tuple(str(_address(a)) for a in addresses if a.strip())
    aioice_ice.get_host_addresses = _host_addresses
    aioice_ice.Connection.request_received = _request_received


def install_from_env(environ: Mapping[str, str] = os.environ) -> bool:
    """Apply ``DAYDREAM_SCOPE_ICE_HOST_ADDRESSES`` (comma-separated) when it is set; True if so."""
    raw = environ.get(ENV_VAR, "")
    addresses = [part for part in raw.split(",") if part.strip()]
    if addresses:
        restrict_host_addresses(addresses)
    return bool(addresses)


def allowed_host_addresses() -> tuple[str, ...]:
    """The restriction in force (empty: none)."""
    return _allowed


def _host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    """Drop-in for aioice's discovery, honouring the restriction."""
    if not _allowed:
        return _discover_every_interface(use_ipv4, use_ipv6)
    wanted = {4: use_ipv4, 6: use_ipv6}
    return [a for a in _allowed if wanted[ipaddress.ip_address(a).version]]


def _request_received(connection, message, addr, protocol) -> None:
    """Drop-in for aioice's check handling: checks from refused addresses go unanswered."""
    if may_check(addr[0]):
        _answer_check(connection, message, addr, protocol)


def loopback_only() -> bool:
    """True when every allowed local address is loopback."""
    return bool(_allowed) and all(ipaddress.ip_address(a).is_loopback for a in _allowed)


def may_check(remote_host: str | None) -> bool:
    """Whether a remote candidate's address may receive checks (non-IP names are not loopback)."""
    if not loopback_only():
        return True
    try:
        return ipaddress.ip_address((remote_host or "").strip("[]")).is_loopback
    except ValueError:
        return False


def drop_unreachable_candidates(sdp: str) -> str:
    """``sdp`` without the ``a=candidate`` lines :func:`may_check` refuses."""
    if not loopback_only():
        return sdp
    lines = sdp.splitlines(keepends=True)
    return "".join(line for line in lines if not _refused_candidate_line(line))


def _refused_candidate_line(line: str) -> bool:
    if not line.startswith("a=candidate:"):
        return False
    fields = line.split()
    return len(fields) < 5 or not may_check(fields[4])
