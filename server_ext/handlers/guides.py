"""The guides (``docs/*.md``), rendered at ``/scope/docs/``: the page links to them.

They ship inside the package (``scope.docs``), so a server installed from a wheel serves the
guides of its own version. Rendering uses mistune, which Jupyter itself already relies on.
"""

from __future__ import annotations

import functools
import html
import importlib.resources
import re
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from scope.server_ext.handlers.base import ScopeHandler

GUIDE_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1.0">
  <title>{title} · Scope</title>
  <style>
    body {{ font-family: system-ui, sans-serif; line-height: 1.5; margin: 0 auto; padding: 1rem 1.5rem; max-width: 60rem; }}
    nav {{ display: flex; gap: 1rem; flex-wrap: wrap; border-bottom: 1px solid #ccc; padding-bottom: 0.5rem; }}
    pre {{ background: #f4f4f4; padding: 0.75rem; overflow-x: auto; }}
    code {{ font-family: ui-monospace, monospace; font-size: 0.92em; }}
    table {{ border-collapse: collapse; display: block; overflow-x: auto; }}
    th, td {{ border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }}
  </style>
</head>
<body>
  <nav><a href="{base}scope/">Scope page</a> <a href="{base}docs">API reference (/docs)</a> {guides}</nav>
  <main>{body}</main>
</body>
</html>
"""


def guide_names() -> list[str]:
    """The guides that ship with this package, by file name."""
    root = importlib.resources.files("scope.docs")
    return sorted(entry.name for entry in root.iterdir() if entry.name.endswith(".md"))


def heading_slug(token: dict[str, Any], index: int) -> str:
    """The anchor a heading gets, as the guides' own links spell it (``## The /scope/ page`` -> ``the-scope-page``)."""
    text = re.sub(r"[^\w\- ]", "", token["text"].lower())
    return text.strip().replace(" ", "-")


@functools.cache
def rendered(name: str) -> tuple[str, str]:
    """The guide ``name`` as HTML, and its title (guides do not change while the server runs)."""
    import mistune
    from mistune.toc import add_toc_hook

    markdown = mistune.create_markdown(plugins=["table", "strikethrough", "url"])
    add_toc_hook(markdown, max_level=6, heading_id=heading_slug)
    source = (importlib.resources.files("scope.docs") / name).read_text(encoding="utf-8")
    body, _ = markdown.parse(source)
    first_heading = next((line[2:] for line in source.splitlines() if line.startswith("# ")), name)
    return body, first_heading


class GuidesHandler(ScopeHandler):
    """One guide (``/scope/docs/server.md``) or, without a name, the list of them."""

    pattern = r"/scope/docs/?([A-Za-z0-9_-]+\.md)?"

    @property
    def content_security_policy(self) -> str:
        return "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:"

    @allow_unauthenticated
    def get(self, name: str | None = None) -> None:
        names = guide_names()
        if name is None:
            items = "".join(f'<li><a href="{n}">{n}</a></li>' for n in names)
            body, title = f"<h1>Guides</h1><ul>{items}</ul>", "Guides"
        elif name not in names:
            raise web.HTTPError(404, f"No guide named {name}; the guides are: {', '.join(names)}")
        else:
            body, title = rendered(name)
        links = " ".join(f'<a href="{self.base_url}scope/docs/{n}">{n[:-3]}</a>' for n in names)
        page = GUIDE_PAGE.format(title=html.escape(title), base=self.base_url, guides=links, body=body)
        self.finish(page, set_content_type="text/html; charset=utf-8")
