"""Waiting in a cell for what a widget's view reports: ``await w.wait_for("streaming")``.

The readings of a :class:`~scope.widgets.ScopeWidget` (``status``, ``fps``, ``chunk``...) come
from its view in the browser, as comm messages to the kernel. A cell that only reads them sees
the values from before it started, because the kernel takes those messages in between cells;
"Run All" queues the next cells first, so a status cell right after the widget reads
``'not shown'``. A cell that *awaits* lets the kernel take the messages in while it waits:
ipykernel 7.4 and later dispatch comm messages while an async cell waits, ahead of the queued
cells. (``jupyter-ui-poll``, which did this for older kernels, breaks ipykernel 7.4's dispatch.)

Without a view nothing would ever arrive, so a wait refuses at once instead of running into its
timeout: when no front end showing widgets serves the kernel (a headless run under nbclient or
nbconvert), when the widget was never displayed, or when its view was closed.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Callable

import ipywidgets

if TYPE_CHECKING:
    from scope.widgets.scope_widget import ScopeWidget


#: The first ipykernel that dispatches comm messages while an async cell waits.
KERNEL_NEEDED = (7, 4)

POLL_S = 0.05


def acknowledge_comm_messages() -> None:
    """Answer each comm message the kernel takes in while a cell runs with the ``idle`` it owes.

    ipykernel 7.4 dispatches such a message without publishing the ``busy``/``idle`` status
    around it. ipywidgets' front end sends a model's next update only once it has seen ``idle``
    for the previous one, so after the first report that arrived during a cell (under "Run All",
    nearly always) a view's reports would stop reaching the kernel for good. Once per kernel, the
    comm handler is wrapped to publish that ``idle`` when a cell is running, then ``busy`` again
    for the cell, so the front end still shows the cell as running.
    """
    shell = _shell()
    kernel = getattr(shell, "kernel", None)
    handler = getattr(kernel, "shell_handlers", {}).get("comm_msg")
    if handler is None or getattr(handler, "acknowledges", False):
        return
    running: list[dict] = []  # the execute request of the cell running now, if any

    def acknowledged(stream, idents, msg):
        try:
            return handler(stream, idents, msg)
        finally:
            if running:
                kernel._publish_status("idle", "shell", parent=msg)
                kernel._publish_status("busy", "shell", parent=running[0])

    def started(*_):
        running[:] = [kernel.get_parent("shell")]

    def ended(*_):
        running.clear()

    acknowledged.acknowledges = True
    kernel.shell_handlers["comm_msg"] = acknowledged
    shell.events.register("pre_run_cell", started)
    shell.events.register("post_run_cell", ended)


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


class NoViewError(RuntimeError):
    """No view of the widget is shown, so nothing it would report can arrive."""


def frontend_connected() -> bool:
    """Whether this kernel serves a front end that shows widgets.

    A Jupyter server starts the kernel of a notebook opened in JupyterLab, Notebook or Voila with
    ``JPY_SESSION_NAME`` (the notebook's path); VS Code names its notebook in
    ``__vsc_ipynb_file__``; another front end shows itself by opening ipywidgets' control comm
    or by drawing a view. Headless runners (nbclient, nbconvert, papermill) and plain Python do
    none of these.
    """
    shell = _shell()
    return bool(
        _views_drawn
        or os.environ.get("JPY_SESSION_NAME")
        or getattr(ipywidgets.Widget, "_control_comm", None) is not None
        or (shell is not None and "__vsc_ipynb_file__" in shell.user_ns)
    )


#: A view of some widget has been drawn in this kernel (so a front end is there).
_views_drawn = False


def view_drawn() -> None:
    global _views_drawn
    _views_drawn = True


def no_view_reason(widget: ScopeWidget) -> str | None:
    """Why no view can report, or None when one is shown or on its way (displayed, not yet drawn)."""
    if widget._view_count:
        return None
    if widget._view_seen:
        return "its view was closed (the output was cleared or the cell re-run); display(w) shows it again"
    if not frontend_connected():
        return (
            "no front end shows widgets in this kernel (a headless run, e.g. nbclient or nbconvert), "
            "so what the view reports never arrives"
        )
    if not widget._displayed:
        return "the widget has not been displayed: display(w) first"
    return None


def _check_kernel() -> None:
    """Refuse a kernel that would hold the front end's messages until the cell ends."""
    try:
        import ipykernel
    except ImportError:  # no kernel, so no front end either: no_view_reason said so already
        return
    if tuple(ipykernel.version_info[:2]) < KERNEL_NEEDED:
        raise RuntimeError(
            f"waiting for the widget needs ipykernel >= {'.'.join(map(str, KERNEL_NEEDED))} (this kernel runs "
            f"{ipykernel.__version__}, which takes the front end's messages only after the cell): "
            "pip install -U ipykernel, then restart the kernel"
        )


async def wait_until(widget: ScopeWidget, condition: Callable[[ScopeWidget], bool], timeout: float, what: str) -> None:
    """Wait until ``condition(widget)`` holds, taking in the view's reports meanwhile.

    Raises :class:`NoViewError` at once when no view can report (also when it closes meanwhile),
    RuntimeError when the view reports an error during the wait, TimeoutError after ``timeout``.
    """
    if condition(widget):
        return
    reason = no_view_reason(widget)
    if reason:
        raise NoViewError(f"cannot wait for {what}: {reason}.")
    _check_kernel()
    seen: list[str] = []
    record = lambda change: seen.append(change["new"])  # noqa: E731 - one observer, removed below
    widget.observe(record, names=["status"])
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    try:
        while not condition(widget):
            reason = no_view_reason(widget)
            if reason:
                raise NoViewError(f"cannot wait for {what}: {reason}.")
            status = widget.status
            if status == "closed" and status in seen:
                raise NoViewError(f"cannot wait for {what}: its view was closed.")
            # A view that cannot reach its server stays so; an error counts once reported during
            # the wait (one from before may be what the awaited action is about to clear).
            if (status == "unavailable" and (seen or widget._view_count)) or (status == "error" and status in seen):
                raise RuntimeError(f"the widget reports {status!r} while waiting for {what}: {widget.error}")
            if loop.time() >= deadline:
                shown = "" if widget._view_seen else " (no view has been drawn yet)"
                raise TimeoutError(
                    f"no {what} within {timeout:g} s{shown}: status {widget.status!r}, chunk {widget.chunk}, "
                    f"fps {widget.fps}, error {widget.error!r}"
                )
            await asyncio.sleep(POLL_S)
    finally:
        widget.unobserve(record, names=["status"])
