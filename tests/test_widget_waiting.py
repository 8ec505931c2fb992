"""``await w.wait_for(...)``: the wait takes in what the view reports, and refuses at once when
no view can report. The wait inside a real JupyterLab is ``test_widget_lab.py``'s quick start.
"""

from __future__ import annotations

import asyncio

import pytest

from scope.widgets import ScopeWidget
from scope.widgets import waiting
from scope.widgets.waiting import NoViewError

#: Far beyond these tests' timeout: a wait that does not refuse at once fails the test.
NEVER = 3600

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def frontend(monkeypatch):
    """The kernel serves a notebook opened in JupyterLab (its Jupyter server names the session)."""
    monkeypatch.setenv("JPY_SESSION_NAME", "/notebooks/01_quick_start.ipynb")


def shown(w: ScopeWidget) -> ScopeWidget:
    w._repr_mimebundle_()  # what display(w) asks for
    return w


def test_without_a_front_end_the_wait_raises_at_once(monkeypatch):
    """A headless run (nbclient, plain Python): no view will ever report, so no waiting."""
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setattr(waiting, "_views_drawn", False)
    w = shown(ScopeWidget())
    with pytest.raises(NoViewError, match="no front end shows widgets in this kernel"):
        asyncio.run(w.wait_for("streaming", timeout=NEVER))
    with pytest.raises(NoViewError, match="headless run"):
        asyncio.run(w.wait_until(lambda w: w.chunk >= 3, timeout=NEVER))


@pytest.mark.usefixtures("frontend")
def test_a_widget_never_displayed_or_whose_view_closed_raises_at_once():
    w = ScopeWidget()
    with pytest.raises(NoViewError, match=r"not been displayed: display\(w\) first"):
        asyncio.run(w.wait_for("streaming", timeout=NEVER))
    shown(w)
    w.set_state({"_view_count": 1})
    w.set_state({"_view_count": 0})  # the output was cleared
    with pytest.raises(NoViewError, match="its view was closed"):
        asyncio.run(w.wait_for("streaming", timeout=NEVER))


@pytest.mark.usefixtures("frontend")
def test_the_wait_takes_in_the_views_reports_until_they_hold():
    w = shown(ScopeWidget())

    async def view():
        """The view's messages, arriving while the wait awaits."""
        for update in ({"_view_count": 1}, {"status": "connecting"}, {"status": "streaming"},
                       {"chunk": 1, "fps": 0.0}, {"chunk": 3, "fps": 6.5}):
            await asyncio.sleep(0.1)
            w.set_state(update)

    async def run():
        reporting = asyncio.create_task(view())
        status = await w.wait_for("streaming", "paused", timeout=NEVER)
        assert status == "streaming"
        await w.wait_until(lambda w: w.chunk >= 3 and w.fps > 0, timeout=NEVER)
        await reporting

    asyncio.run(run())
    assert (w.status, w.chunk, w.fps) == ("streaming", 3, 6.5)
    assert asyncio.run(w.wait_for("streaming", timeout=NEVER)) == "streaming", "what holds already returns at once"


@pytest.mark.usefixtures("frontend")
def test_the_wait_ends_with_the_views_error_or_its_closing():
    w = shown(ScopeWidget())
    w.set_state({"_view_count": 1})

    async def wait_while(update):
        async def report():
            await asyncio.sleep(0.1)
            w.set_state(update)

        reporting = asyncio.create_task(report())
        try:
            await w.wait_for("streaming", timeout=NEVER)
        finally:
            await reporting

    with pytest.raises(RuntimeError, match="reports 'error' while waiting for status 'streaming': Load refused: height"):
        asyncio.run(wait_while({"status": "error", "error": "Load refused: height"}))
    with pytest.raises(NoViewError, match="its view was closed"):
        asyncio.run(wait_while({"status": "closed", "_view_count": 0}))


@pytest.mark.usefixtures("frontend")
def test_a_view_that_never_reports_runs_into_the_timeout():
    w = shown(ScopeWidget())
    with pytest.raises(TimeoutError, match=r"no status 'streaming' within 0.2 s \(no view has been drawn yet\): status 'not shown'"):
        asyncio.run(w.wait_for("streaming", timeout=0.2))
