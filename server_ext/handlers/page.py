"""What the ``/scope/`` page needs beyond its static files: the widget's starting state.

The page mounts the notebook widget's view over a model of its own; that model starts from a new
``ScopeWidget``'s state, read here from the Python class, so the page and the widget start alike
(the same prompt, input and list of stream-parameter traitlets) without a copy in JavaScript.
"""

from __future__ import annotations

import functools
import json

from jupyter_server.auth.decorator import allow_unauthenticated

from scope.server_ext.handlers.base import ScopeHandler


@functools.cache
def widget_state_document() -> str:
    # Imported on first use: the notebook widget's libraries load only when the page asks.
    from scope.widgets.scope_widget import initial_state

    return json.dumps(initial_state())


class WidgetStateHandler(ScopeHandler):
    """A new ``ScopeWidget``'s synced state (defaults only: no data, so no auth)."""

    pattern = r"/scope/widget-state\.json"

    @allow_unauthenticated
    def get(self) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.finish(widget_state_document())
