"""Autouse overrides for test modules whose servers are all subprocesses.

Import both names into such a module. pytest-jupyter's own versions would set up (and then
close) an event loop for an in-process server that is never started, and Playwright's sync API
owns this thread's loop between its calls.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def jp_asyncio_loop():
    """No in-process Jupyter server, so no loop of pytest-jupyter's."""
    yield None


@pytest.fixture(autouse=True)
def jp_server_cleanup():
    """Nothing to clean: the servers are subprocesses with their own fixtures."""
    yield
