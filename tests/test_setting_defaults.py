"""Code that takes a setting as an argument defaults to the setting's own default."""

from __future__ import annotations

import inspect

import pytest

from scope.config import ScopeSettings, setting_default
from scope.streaming.ice import IceServerProvider
from scope.streaming.webrtc import SessionService


def test_session_limits_and_timeouts_default_to_the_settings():
    params = inspect.signature(SessionService).parameters
    pairs = {
        "max_sessions": "max_sessions",
        "max_pending": "max_pending_sessions",
        "connect_timeout": "connect_timeout",
        "disconnect_timeout": "disconnect_timeout",
        "max_repeated_failures": "max_repeated_chunk_failures",
    }
    for argument, setting in pairs.items():
        assert params[argument].default == setting_default(setting), argument
    assert setting_default("max_sessions") == ScopeSettings.class_traits()["max_sessions"].default_value == 4


@pytest.mark.asyncio
async def test_an_ice_provider_without_arguments_advertises_the_settings_stun_server():
    servers = await IceServerProvider().client_ice_servers()
    assert servers == [{"urls": [setting_default("stun_fallback")], "username": None, "credential": None}]
    assert setting_default("stun_fallback") == "stun:stun.l.google.com:19302"
