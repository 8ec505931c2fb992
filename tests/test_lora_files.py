"""Managing LoRA files over HTTP against the in-process server: list (both endpoints), install from
a URL served on 127.0.0.1, upload, delete; caps, quota, names and containment."""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import threading
from pathlib import Path
from urllib.parse import quote

import pytest

from scope.models.synthetic.lora import (
    SYNTHETIC_LORA_FORMATS,
    synthetic_lora_bytes,
    write_synthetic_lora,
)
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG
from tests.test_longlive_server import load

pytestmark = pytest.mark.usefixtures("jp_serverapp")

MIB = 1024 * 1024
CAP = 1 * MIB
QUOTA = 3 * MIB
OCTET = {"Content-Type": "application/octet-stream"}
LOADER_FORMAT = {"peft": "peft", "peft_alpha": "peft", "peft_base_model": "peft", "dotted": "dotted", "kohya": "kohya", "diffusers": "diffusers"}


@pytest.fixture
def scope_extra_config(request):
    """Small limits; parametrized (indirectly) with "synthetic_models", the synthetic weights too."""
    config = {"lora_max_file_bytes": CAP, "lora_quota_bytes": QUOTA, "lora_url_hosts": ["127.0.0.1"]}
    if getattr(request, "param", None) == "synthetic_models":
        config["models_dir"] = str(request.getfixturevalue("synthetic_models"))
    return config


def lora_bytes(fmt: str = "peft", seed: int = 1, suffix: str = ".safetensors") -> bytes:
    return synthetic_lora_bytes(fmt, SYNTHETIC_WAN_CONFIG, seed, suffix=suffix)


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith("."))


# A file server on 127.0.0.1 ----------------------------------------------------------------------


class FileServer:
    """Serves ``routes[path] = (status, headers, body)``; a body of ``None`` with
    ``"stream": n`` streams n bytes without a Content-Length (HTTP/1.0, close-delimited)."""

    def __init__(self):
        self.routes: dict[str, tuple[int, dict[str, str], bytes | int]] = {}
        routes = self.routes

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                status, headers, body = routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if isinstance(body, int):  # streamed, no length
                    self.end_headers()
                    for _ in range(body // 65536):
                        self.wfile.write(b"\0" * 65536)
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def add(self, path: str, body: bytes | int, status: int = 200, **headers: str) -> str:
        self.routes[path] = (status, {k.replace("_", "-"): v for k, v in headers.items()}, body)
        return self.url + path


@pytest.fixture
def files():
    server = FileServer()
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


async def install(api, body: dict):
    return await api("POST", "api/v1/loras", body)


async def upload(api, filename: str, data: bytes, overwrite: str | None = None):
    query = f"filename={quote(filename, safe='')}" + (f"&overwrite={overwrite}" if overwrite is not None else "")
    return await api("POST", f"api/v1/loras/upload?{query}", body=data, headers=OCTET)


def loc(reply) -> list:
    """The field a 4xx names: a validation error's ``loc``, or the name a plain message starts with
    (``Invalid filename: ...``, as uploads answer before reading the body)."""
    detail = reply.json["detail"]
    if isinstance(detail, str):
        return ["query", detail.split(":")[0].split()[-1]]
    return detail[0]["loc"]


# Listing ---------------------------------------------------------------------------------------


async def test_both_lists_show_every_format_and_a_bad_file_only_gets_an_error(api, scope_dirs, services):
    root = scope_dirs["lora"].resolve()
    for fmt in SYNTHETIC_LORA_FORMATS:
        write_synthetic_lora(root / f"{fmt}.safetensors", fmt, SYNTHETIC_WAN_CONFIG, seed=1, rank=4)
    write_synthetic_lora(root / "sub" / "deep.pt", "kohya", SYNTHETIC_WAN_CONFIG, seed=2, rank=2,
                         targets=["blocks.0.cross_attn.o", "blocks.1.cross_attn.o"])
    (root / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    (root / ".hidden.safetensors").write_bytes(lora_bytes())
    (root / "notes.txt").write_text("not listed")

    spec = (await api("GET", "api/v1/lora/list")).json["lora_files"]
    assert [(f["folder"], f["name"]) for f in spec][-1] == ("sub", "deep")
    assert all(set(f) == {"name", "path", "size_mb", "folder"} for f in spec)

    reply = await api("GET", "api/v1/loras")
    assert reply.status == 200, reply.body
    entries = {e["name"]: e for e in reply.json["lora_files"]}
    assert set(entries) == {*SYNTHETIC_LORA_FORMATS, "deep", "broken"}
    assert [e["name"] for e in reply.json["lora_files"]][-1] == "deep"  # sorted by folder, then name
    for fmt in SYNTHETIC_LORA_FORMATS:
        entry = entries[fmt]
        data = (root / f"{fmt}.safetensors").read_bytes()
        assert entry["path"] == str(root / f"{fmt}.safetensors") and entry["folder"] is None
        assert entry["size_bytes"] == len(data) and entry["size_mb"] == round(len(data) / MIB, 2)
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert (entry["format"], entry["rank"], entry["error"]) == (LOADER_FORMAT[fmt], 4, None)
        assert entry["targets"]["count"] == 20
        assert entry["targets"]["kinds"] == sorted(["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                                                    "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o",
                                                    "ffn.0", "ffn.2"])
        assert entry["targets"]["examples"][0] == "blocks.0.cross_attn.k"
    deep = entries["deep"]
    assert (deep["folder"], deep["format"], deep["rank"]) == ("sub", "kohya", 2)
    assert deep["targets"] == {"count": 2, "kinds": ["cross_attn.o"], "examples": ["blocks.0.cross_attn.o", "blocks.1.cross_attn.o"]}
    broken = entries["broken"]
    assert broken["error"].startswith("not a safetensors file")
    assert (broken["format"], broken["rank"], broken["targets"]) == (None, None, None)
    assert broken["sha256"] == hashlib.sha256(b"this is not a safetensors file").hexdigest()

    hashed = services.lora_files.hashed
    await api("GET", "api/v1/loras")
    assert services.lora_files.hashed == hashed  # nothing changed: nothing hashed again
    (root / "broken.safetensors").write_bytes(lora_bytes("dotted"))
    again = {e["name"]: e for e in (await api("GET", "api/v1/loras")).json["lora_files"]}
    assert services.lora_files.hashed == hashed + 1
    assert again["broken"]["format"] == "dotted" and again["broken"]["error"] is None
    assert again["broken"]["sha256"] == hashlib.sha256(lora_bytes("dotted")).hexdigest()


# Install from a URL ---------------------------------------------------------------------------


async def test_install_from_a_url_streams_the_file_into_place(api, scope_dirs, files):
    data = lora_bytes("diffusers", seed=3)
    url = files.add("/repo/resolve/main/wan%20style.safetensors", data)
    reply = await install(api, {"url": url})
    assert reply.status == 200, reply.body
    target = scope_dirs["lora"].resolve() / "wan style.safetensors"
    assert target.read_bytes() == data
    assert reply.json["message"] == "Successfully installed 'wan style.safetensors'"
    entry = reply.json["file"]
    assert entry["path"] == str(target) and entry["format"] == "diffusers" and entry["rank"] == 4
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()

    refused = await install(api, {"url": url})
    assert refused.status == 409 and "overwrite" in refused.json["detail"], refused.body
    files.add("/repo/resolve/main/wan%20style.safetensors", lora_bytes("kohya", seed=4))
    replaced = await install(api, {"url": url, "overwrite": True})
    assert replaced.status == 200 and replaced.json["file"]["format"] == "kohya"
    assert target.read_bytes() == lora_bytes("kohya", seed=4)
    assert leftovers(scope_dirs["lora"]) == []


async def test_install_names_the_file_from_content_disposition_or_the_request(api, scope_dirs, files):
    root = scope_dirs["lora"]
    url = files.add("/api/download/models/123", lora_bytes("kohya"),
                    Content_Disposition="attachment; filename=\"anime.safetensors\"")
    reply = await install(api, {"url": url})
    assert reply.status == 200, reply.body
    assert (root / "anime.safetensors").read_bytes() == lora_bytes("kohya")
    redirect = files.add("/go", b"", status=302, Location=url)
    reply = await install(api, {"url": redirect, "filename": "mine.pt"})
    assert reply.status == 200, reply.body
    assert (root / "mine.pt").read_bytes() == lora_bytes("kohya")
    unnamed = files.add("/blob", lora_bytes())
    reply = await install(api, {"url": unnamed})
    assert reply.status == 400 and loc(reply) == ["body", "filename"], reply.body


async def test_install_refusals_name_the_field_and_leave_nothing(api, scope_dirs, files):
    root = scope_dirs["lora"]
    cases = [
        ({"url": "ftp://127.0.0.1/x.safetensors"}, 400, ["body", "url"]),
        ({"url": "http://localhost:1/x.safetensors"}, 400, ["body", "url"]),  # host not listed
        ({"url": files.add("/x.txt", b"text"), "filename": "../x.safetensors"}, 400, ["body", "filename"]),
        ({"url": files.add("/notes.txt", b"text")}, 400, ["body", "filename"]),  # no LoRA name anywhere
        ({"url": files.add("/x.safetensors", b"x"), "filename": "x.ckpt"}, 400, ["body", "filename"]),
        ({}, 422, ["body", "url"]),
        ({"url": "http://127.0.0.1/a.pt", "synthetic": "peft"}, 422, ["body", "url"]),
    ]
    for body, status, field in cases:
        reply = await install(api, body)
        assert reply.status == status, (body, reply.body)
        assert loc(reply) == field, (body, reply.body)
    missing = await install(api, {"url": files.url + "/gone.safetensors"})
    assert missing.status == 502 and "HTTP 404" in missing.json["detail"]
    too_big = await install(api, {"url": files.add("/big.safetensors", b"\0" * (CAP + 1))})
    assert too_big.status == 413 and "lora_max_file_bytes" in too_big.json["detail"]
    streamed = await install(api, {"url": files.add("/streamed.safetensors", 2 * CAP)})
    assert streamed.status == 413, streamed.body
    assert sorted(p.name for p in root.rglob("*")) == []
    assert not (root.parent / "x.safetensors").exists()


async def test_a_synthetic_install_needs_no_network(api, scope_dirs):
    reply = await install(api, {"synthetic": "kohya"})
    assert reply.status == 200, reply.body
    assert reply.json["file"]["name"] == "synthetic-kohya" and reply.json["file"]["format"] == "kohya"
    assert (scope_dirs["lora"] / "synthetic-kohya.safetensors").read_bytes() == lora_bytes("kohya", seed=0)


# Upload ----------------------------------------------------------------------------------------


async def test_upload_stores_the_file_and_describes_it(api, scope_dirs):
    data = lora_bytes("dotted", suffix=".pt")
    reply = await upload(api, "style.pt", data)
    assert reply.status == 200, reply.body
    target = scope_dirs["lora"].resolve() / "style.pt"
    assert target.read_bytes() == data
    assert reply.json["path"] == str(target) and reply.json["format"] == "dotted"
    assert reply.json["sha256"] == hashlib.sha256(data).hexdigest()
    refused = await upload(api, "style.pt", lora_bytes("peft"))
    assert refused.status == 409 and "overwrite=true" in refused.json["detail"], refused.body
    assert (await upload(api, "style.pt", lora_bytes("peft"), overwrite="maybe")).status == 400
    replaced = await upload(api, "style.pt", lora_bytes("peft", suffix=".pt"), overwrite="true")
    assert replaced.status == 200 and replaced.json["format"] == "peft"
    assert leftovers(scope_dirs["lora"]) == []


async def test_upload_refuses_bad_names_escapes_and_sizes(api, scope_dirs):
    root = scope_dirs["lora"]
    for name in ("x.png", "../escape.safetensors", "sub/x.safetensors", ".hidden.pt", "x.ckpt"):
        reply = await upload(api, name, lora_bytes())
        assert reply.status == 400, (name, reply.body)
        assert loc(reply) == ["query", "filename"], (name, reply.body)
    missing = await api("POST", "api/v1/loras/upload", body=b"x", headers=OCTET)
    assert missing.status == 422 and loc(missing) == ["query", "filename"]
    too_big = await upload(api, "big.safetensors", b"\0" * (CAP + 1))
    assert too_big.status == 413 and "lora_max_file_bytes" in too_big.json["detail"]
    assert list(root.iterdir()) == [] and not (root.parent / "escape.safetensors").exists()


async def test_the_quota_counts_what_the_directory_holds(api, scope_dirs):
    (scope_dirs["lora"] / "placed.bin").write_bytes(b"\0" * (QUOTA - CAP // 2))
    reply = await upload(api, "one.safetensors", b"\0" * CAP)
    assert reply.status == 507, reply.body
    assert "lora_quota_bytes" in reply.json["detail"] and str(QUOTA) in reply.json["detail"]
    assert sorted(p.name for p in scope_dirs["lora"].iterdir()) == ["placed.bin"]
    assert (await upload(api, "small.safetensors", lora_bytes())).status == 200


# Delete ----------------------------------------------------------------------------------------


async def test_delete_by_name_or_stem_contained(api, scope_dirs):
    root = scope_dirs["lora"]
    write_synthetic_lora(root / "a.safetensors", "peft", SYNTHETIC_WAN_CONFIG, 1)
    write_synthetic_lora(root / "sub" / "b.pt", "peft", SYNTHETIC_WAN_CONFIG, 1)
    write_synthetic_lora(root / "twin.safetensors", "peft", SYNTHETIC_WAN_CONFIG, 1)
    write_synthetic_lora(root / "twin.pt", "peft", SYNTHETIC_WAN_CONFIG, 1)
    outside = scope_dirs["models"] / "keep.safetensors"
    outside.write_bytes(b"outside")

    assert (await api("DELETE", "api/v1/loras/nope")).status == 404
    escape = await api("DELETE", "api/v1/loras/..%2Fmodels%2Fkeep.safetensors")
    assert escape.status == 403, escape.body
    assert outside.read_bytes() == b"outside"
    ambiguous = await api("DELETE", "api/v1/loras/twin")
    assert ambiguous.status == 409 and "twin.pt" in ambiguous.json["detail"]
    reply = await api("DELETE", "api/v1/loras/twin.pt")
    assert reply.status == 200 and reply.json == {"success": True, "message": "Deleted 'twin.pt'"}
    assert (await api("DELETE", "api/v1/loras/a")).status == 200
    assert (await api("DELETE", "api/v1/loras/b")).json["message"] == "Deleted 'sub/b.pt'"
    assert sorted(p.name for p in root.rglob("*.*")) == ["twin.safetensors"]


@pytest.mark.parametrize("scope_extra_config", ["synthetic_models"], indirect=True)
async def test_a_lora_the_loaded_pipeline_uses_is_neither_deleted_nor_replaced(api, scope_dirs):
    (scope_dirs["lora"] / "used.safetensors").write_bytes(lora_bytes("peft"))
    await load(api, {"height": 64, "width": 64, "loras": [{"path": "used.safetensors", "scale": 0.5}]})
    refused = await api("DELETE", "api/v1/loras/used")
    assert refused.status == 409, refused.body
    assert "in use by the loaded pipeline 'longlive'" in refused.json["detail"]
    replaced = await upload(api, "used.safetensors", lora_bytes("kohya"), overwrite="true")
    assert replaced.status == 409 and "in use" in replaced.json["detail"]
    assert (scope_dirs["lora"] / "used.safetensors").read_bytes() == lora_bytes("peft")
    assert (await api("POST", "api/v1/pipeline/unload")).status == 200
    assert (await api("DELETE", "api/v1/loras/used.safetensors")).status == 200


# The Python client ---------------------------------------------------------------------------


async def test_the_client_lists_installs_uploads_and_deletes(scope_url, scope_dirs, files, tmp_path):
    from scope.client import ScopeApiError, ScopeClient

    source = write_synthetic_lora(tmp_path / "from-disk.safetensors", "kohya", SYNTHETIC_WAN_CONFIG, 5)
    url = files.add("/styles/web.pt", lora_bytes("diffusers", suffix=".pt"))

    def scenario():
        with ScopeClient(scope_url) as client:
            uploaded = client.upload_lora(source)
            installed = client.install_lora(url)
            synthetic = client.install_lora(synthetic="dotted", filename="dots.safetensors")
            with pytest.raises(ScopeApiError) as refused:
                client.upload_lora(b"again", "from-disk.safetensors")
            listed = client.loras()
            client.delete_lora(listed[0])
            client.delete_lora("web")
            return uploaded, installed, synthetic, refused.value, listed, client.loras()

    uploaded, installed, synthetic, refused, listed, after = await asyncio.to_thread(scenario)
    assert (uploaded.format, uploaded.sha256) == ("kohya", hashlib.sha256(source.read_bytes()).hexdigest())
    assert (installed.name, installed.format) == ("web", "diffusers")
    assert (synthetic.name, synthetic.format) == ("dots", "dotted")
    assert refused.status == 409
    assert [e.name for e in listed] == ["dots", "from-disk", "web"]
    assert [e.name for e in after] == ["from-disk"]
    assert sorted(p.name for p in scope_dirs["lora"].iterdir()) == ["from-disk.safetensors"]


# Origins ---------------------------------------------------------------------------------------


async def test_no_lora_endpoint_admits_null_or_a_foreign_page(api, scope_dirs):
    (scope_dirs["lora"] / "keep.safetensors").write_bytes(lora_bytes())
    for origin in ("null", "https://evil.example"):
        headers = {"Origin": origin}
        for method, path, body, extra in (
            ("GET", "api/v1/loras", None, {}),
            ("POST", "api/v1/loras", b'{"synthetic": "peft"}', {"Content-Type": "application/json"}),
            ("POST", "api/v1/loras/upload?filename=x.safetensors", lora_bytes(), OCTET),
            ("DELETE", "api/v1/loras/keep", None, {}),
        ):
            reply = await api(method, path, body=body, headers={**headers, **extra})
            assert reply.status == 403, (origin, method, path, reply.body)
            assert f"Origin {origin} is not allowed" in reply.json["detail"]
        local = await api("GET", "api/v1/loras", headers={"Origin": "http://localhost:5173"})
        assert local.status == 200 and local.headers["Access-Control-Allow-Origin"] == "http://localhost:5173"
    assert sorted(p.name for p in scope_dirs["lora"].iterdir()) == ["keep.safetensors"]
