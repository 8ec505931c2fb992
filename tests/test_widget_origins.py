"""The widget in a Lab reached by a non-loopback name, streaming from a standalone server.

Chromium resolves ``scope-lab.test`` to 127.0.0.1, so the notebook's origin is
``http://scope-lab.test:<port>``: neither loopback nor the standalone server's own. The server
refuses it, and the widget says which ``--allow-origin`` value admits it; with that flag the
same notebook gets the server's pipelines.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests._subprocess_server import running_scope_server
from tests.servers import SHARED_LAB_NAME
from tests.chromium import browser, page, wait_for  # noqa: F401  (fixtures)
from tests.subprocess_only import jp_asyncio_loop, jp_server_cleanup  # noqa: F401  (autouse fixtures)
from tests.test_widget_lab import notebook, open_notebook, run_cell

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.timeout(240),
]

LAB_NAME = SHARED_LAB_NAME
#: Chromium resolves the Lab's name to loopback (nothing leaves the machine).
EXTRA_CHROMIUM_ARGS = [f"--host-resolver-rules=MAP {LAB_NAME} 127.0.0.1"]


@pytest.fixture(scope="module")
def named_lab(lab_server_process):
    """The shared ``jupyter lab`` as the browser sees it: under ``scope-lab.test`` (Jupyter admits the name)."""
    lab = lab_server_process
    return SimpleNamespace(url=f"http://{LAB_NAME}:{lab.port}/lab-base/", root=lab.root, token=lab.token,
                           origin=f"http://{LAB_NAME}:{lab.port}")


def show_widget(page, lab, name: str, server_url: str) -> None:
    open_notebook(page, lab, name, notebook(
        "from scope.widgets import ScopeWidget\n"
        f"w = ScopeWidget(server={server_url!r}, pipeline_id='passthrough')\n"
        "w",
    ))
    run_cell(page, 0)


def test_widget_shows_the_refusal_with_the_allow_origin_value(page, named_lab, tmp_path):
    with running_scope_server(tmp_path) as scope:
        show_widget(page, named_lab, "refused.ipynb", scope.url)
        wait_for(page, "document.querySelector('.scope-widget')?.dataset.status === 'unavailable'")
        shown = page.inner_text(".scope-widget")
        assert f"daydream-scope --allow-origin {named_lab.origin}" in shown, shown
        assert "refuses this page's origin" in shown, shown
        with scope.client() as client:
            assert client.get("/api/v1/pipeline/status").json()["status"] == "not_loaded"


def test_widget_works_once_the_origin_is_allowed(page, named_lab, tmp_path):
    with running_scope_server(tmp_path, "--allow-origin", named_lab.origin) as scope:
        show_widget(page, named_lab, "allowed.ipynb", scope.url)
        wait_for(page, "['idle', 'ready'].includes(document.querySelector('.scope-widget')?.dataset.status)")
        options = page.eval_on_selector_all(".scope-widget .scope-pipeline option", "os => os.map(o => o.value)")
        assert "passthrough" in options
        page.click(".scope-widget .scope-load-pipeline")
        wait_for(page, "document.querySelector('.scope-widget .scope-pipeline-status')?.textContent === 'Loaded passthrough.'")
