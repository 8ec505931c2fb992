"""The guides at ``/scope/docs/``: every one rendered, every link between them resolves, the page links them."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
GUIDES = sorted(path.name for path in DOCS.glob("*.md"))

pytestmark = pytest.mark.usefixtures("jp_serverapp")


class Links(HTMLParser):
    """The hrefs and element ids of one HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "a" and attributes.get("href"):
            self.hrefs.append(attributes["href"])
        if attributes.get("id"):
            self.ids.add(attributes["id"])


def parsed(body: bytes) -> Links:
    links = Links()
    links.feed(body.decode())
    return links


async def test_the_index_lists_every_guide_and_each_renders_with_its_title(api):
    reply = await api("GET", "scope/docs/")
    assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/html")
    assert set(GUIDES) <= set(parsed(reply.body).hrefs)
    for name in GUIDES:
        reply = await api("GET", f"scope/docs/{name}")
        assert reply.status == 200, name
        title = next(line[2:] for line in (DOCS / name).read_text().splitlines() if line.startswith("# "))
        assert f"<title>{title}" in reply.body.decode().replace("&#x27;", "'"), name
        assert re.search(rb"<h1[^>]*>", reply.body), name


async def test_every_link_between_guides_resolves_to_a_guide_and_its_heading(api, scope_url):
    pages = {name: parsed((await api("GET", f"scope/docs/{name}")).body) for name in GUIDES}
    checked = 0
    for name, links in pages.items():
        here = f"{scope_url}scope/docs/{name}"
        for href in links.hrefs:
            target = urlsplit(urljoin(here, href))
            if not target.path.startswith(urlsplit(scope_url).path + "scope/docs/") or not target.path.endswith(".md"):
                continue
            guide = target.path.rsplit("/", 1)[1]
            assert guide in pages, f"{name} links to {href}: no such guide"
            if target.fragment:
                assert target.fragment in pages[guide].ids, f"{name} links to {href}: no such heading"
            checked += 1
    assert checked >= 10, checked


@pytest.mark.parametrize("path", ["scope/docs/nothing.md", "scope/docs/..%2F..%2Fpyproject.toml", "scope/docs/__init__.py"])
async def test_only_guides_are_served(api, path):
    reply = await api("GET", path)
    assert reply.status in (403, 404), (path, reply.status)
    assert b"pyproject" not in reply.body and b"[project]" not in reply.body


async def test_the_page_links_the_api_reference_and_the_guides(api, scope_url):
    page = f"{scope_url}scope/"
    links = parsed((await api("GET", "scope/")).body).hrefs
    targets = {urljoin(page, href) for href in links if not href.endswith(".css")}
    assert f"{scope_url}docs" in targets
    assert {f"{scope_url}scope/docs/server.md", f"{scope_url}scope/docs/widgets.md"} <= targets
    for target in targets:
        reply = await api("GET", target[len(scope_url):])
        assert reply.status in (200, 301), (target, reply.status)
