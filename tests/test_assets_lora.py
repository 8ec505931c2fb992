"""Assets (upload, list, serve) and the LoRA file list, over HTTP against the in-process server."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from tests.polling import wait_until

pytestmark = pytest.mark.usefixtures("jp_serverapp")

MAX_UPLOAD = 50 * 1024 * 1024
OCTET = {"Content-Type": "application/octet-stream"}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")


def _blob(size: int, seed: int = 1) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(size))


def _files(root: Path) -> set[str]:
    """Every entry under ``root`` (hidden ones too), relative to it."""
    return {p.relative_to(root).as_posix() for p in root.rglob("*")} if root.exists() else set()


def _temp_leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob("*") if p.name.startswith("."))


async def upload(api, filename: str, data: bytes):
    return await api("POST", f"api/v1/assets?filename={quote(filename, safe='')}", body=data, headers=OCTET)


# Raw HTTP, for what a buffering client cannot do (read a reply while the body is still going) ----


async def _open(scope_url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
    url = urlsplit(scope_url)
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    return reader, writer, url.path


async def _read_reply(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    else:
        body = await reader.read()
    return status, headers, body


def _upload_head(base_path: str, filename: str, extra: str) -> bytes:
    return (
        f"POST {base_path}api/v1/assets?filename={quote(filename, safe='')} HTTP/1.1\r\n"
        "Host: 127.0.0.1\r\n"
        "Content-Type: application/octet-stream\r\n"
        f"{extra}\r\n"
    ).encode()


def _pending_upload_handlers() -> list[asyncio.Task]:
    """Request-handling tasks of upload handlers that have not ended (a hung one is a leak)."""
    from scope.server_ext.handlers.files import AssetsHandler

    pending = []
    for task in asyncio.all_tasks():
        coro = task.get_coro()
        frame = getattr(coro, "cr_frame", None)
        if frame is not None and isinstance(frame.f_locals.get("self"), AssetsHandler):
            pending.append(task)
    return pending


async def _clock_past(path: Path, probe: Path) -> None:
    """Wait until a file written now would get a later change time than ``path`` (whatever the
    filesystem's timestamp granularity), so listings sorted by it have a defined order."""

    def stamp() -> float:
        probe.write_bytes(b"")
        return probe.stat().st_ctime

    await wait_until(lambda t: t > path.stat().st_ctime, what=f"a change time later than {path.name}'s", value=stamp)


# Upload -------------------------------------------------------------------------------------


async def test_upload_returns_the_asset_object(api, scope_dirs):
    data = _blob(1_234_567)
    before = time.time()
    reply = await upload(api, "ref1.png", data)
    assert reply.status == 200, reply.body
    asset = reply.json
    target = scope_dirs["assets"].resolve() / "ref1.png"
    assert set(asset) == {"name", "path", "size_mb", "folder", "type", "created_at"}
    assert asset["name"] == "ref1"
    assert asset["path"] == str(target)
    assert Path(asset["path"]).is_absolute()
    assert asset["size_mb"] == round(len(data) / (1024 * 1024), 2) == 1.18
    assert asset["folder"] is None
    assert asset["type"] == "image"
    assert isinstance(asset["created_at"], float)
    assert before - 5 <= asset["created_at"] <= time.time() + 5
    assert asset["created_at"] == pytest.approx(target.stat().st_ctime)
    assert target.read_bytes() == data
    assert _temp_leftovers(scope_dirs["assets"]) == []


@pytest.mark.parametrize("suffix", IMAGE_SUFFIXES + VIDEO_SUFFIXES)
async def test_every_allowed_extension_uploads_with_its_type(api, scope_dirs, suffix):
    reply = await upload(api, f"clip{suffix}", b"xyz")
    assert reply.status == 200, reply.body
    assert reply.json["type"] == ("image" if suffix in IMAGE_SUFFIXES else "video")
    assert reply.json["name"] == "clip"
    assert reply.json["size_mb"] == 0.0
    assert (scope_dirs["assets"] / f"clip{suffix}").read_bytes() == b"xyz"


async def test_upper_case_extension_is_accepted_and_listed(api, scope_dirs):
    reply = await upload(api, "X.PNG", b"upper")
    assert reply.status == 200, reply.body
    assert reply.json["name"] == "X" and reply.json["type"] == "image"
    assert (scope_dirs["assets"] / "X.PNG").read_bytes() == b"upper"
    listed = (await api("GET", "api/v1/assets?type=image")).json["assets"]
    assert [a["name"] for a in listed] == ["X"]
    assert (await api("GET", "api/v1/assets?type=video")).json["assets"] == []


@pytest.mark.parametrize("content_type", ["image/png", "video/mp4", "application/json"])
async def test_content_type_of_the_upload_is_not_checked(api, scope_dirs, content_type):
    reply = await api("POST", "api/v1/assets?filename=typed.png", body=b"png bytes", headers={"Content-Type": content_type})
    assert reply.status == 200, reply.body
    assert (scope_dirs["assets"] / "typed.png").read_bytes() == b"png bytes"


async def test_empty_upload_is_an_empty_asset(api, scope_dirs):
    reply = await upload(api, "empty.png", b"")
    assert reply.status == 200, reply.body
    assert reply.json["size_mb"] == 0.0
    assert (scope_dirs["assets"] / "empty.png").read_bytes() == b""


@pytest.mark.parametrize("filename", ["notes.txt", "x", "x.png.exe", "model.safetensors", "x.gif"])
async def test_wrong_extension_is_refused_naming_the_allowed_types(api, scope_dirs, filename):
    reply = await upload(api, filename, b"data")
    assert reply.status == 400, reply.body
    detail = reply.json["detail"]
    assert detail.startswith("Invalid file type. Allowed types: ")
    for suffix in IMAGE_SUFFIXES + VIDEO_SUFFIXES:
        assert suffix in detail
    assert _files(scope_dirs["assets"]) == set()


@pytest.mark.parametrize("query", ["", "?filename=", "?name=x.png"])
async def test_missing_filename_is_422_naming_it(api, scope_dirs, query):
    reply = await api("POST", f"api/v1/assets{query}", body=b"data", headers=OCTET)
    assert reply.status == 422, reply.body
    assert any(error["loc"] == ["query", "filename"] for error in reply.json["detail"])
    assert _files(scope_dirs["assets"]) == set()


@pytest.mark.parametrize(
    "make_name",
    [
        lambda tmp: "sub/x.png",
        lambda tmp: "sub\\x.png",
        lambda tmp: "../escaped.png",
        lambda tmp: "..\\escaped.png",
        lambda tmp: "sub/../../escaped.png",
        lambda tmp: "..",
        lambda tmp: ".hidden.png",
        lambda tmp: ".png",
        lambda tmp: str(tmp / "escaped.png"),
        lambda tmp: str(tmp / "assets" / "inside.png"),
    ],
    ids=["slash", "backslash", "dotdot", "dotdot-backslash", "nested-dotdot", "bare-dotdot", "hidden",
         "only-suffix", "absolute-outside", "absolute-inside"],
)
async def test_names_with_paths_are_refused_and_nothing_is_written(api, scope_dirs, tmp_path, make_name):
    name = make_name(tmp_path)
    assets = scope_dirs["assets"]
    parent_before = {p.name for p in assets.parent.iterdir()}
    reply = await upload(api, name, b"must not land anywhere")
    assert reply.status == 400, reply.body
    assert "detail" in reply.json
    assert _files(assets) == set()
    assert {p.name for p in assets.parent.iterdir()} == parent_before
    assert not (assets / "sub").exists()
    for leaked in ("escaped.png", "inside.png", "x.png", ".hidden.png"):
        assert not list(tmp_path.rglob(leaked)), leaked


async def test_declared_length_over_the_cap_is_413_before_any_byte(scope_url, scope_dirs):
    reader, writer, base = await _open(scope_url)
    try:
        writer.write(_upload_head(base, "big.png", f"Content-Length: {MAX_UPLOAD + 1}\r\n"))
        await writer.drain()
        status, headers, body = await asyncio.wait_for(_read_reply(reader), 30)
    finally:
        writer.close()
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    assert json.loads(body) == {"detail": "File size exceeds maximum of 50MB"}
    assert _files(scope_dirs["assets"]) == set()


async def test_declared_length_over_the_cap_with_a_buffering_client(api, scope_dirs):
    """A client that sends the whole body first still never leaves a file behind."""
    try:
        reply = await upload(api, "big.mp4", b"\0" * (MAX_UPLOAD + 1))
    except (ConnectionError, OSError):  # the server may close while the body is still going
        reply = None
    if reply is not None:
        assert reply.status == 413, reply.body
    await wait_until(lambda: _files(scope_dirs["assets"]) == set(), what="an empty assets folder")


async def test_exactly_the_cap_is_accepted(api, scope_dirs):
    data = b"\x01" * MAX_UPLOAD
    reply = await upload(api, "edge.webm", data)
    assert reply.status == 200, reply.body
    assert reply.json["size_mb"] == 50.0
    assert (scope_dirs["assets"] / "edge.webm").stat().st_size == MAX_UPLOAD
    assert _temp_leftovers(scope_dirs["assets"]) == []


def _pieces(size: int, first_over_by: int | None = None):
    """Body pieces of ``size`` bytes past the cap; with ``first_over_by``, stop at exactly that far past it."""
    sent = 0
    while sent <= MAX_UPLOAD + 4 * size:
        piece = size
        if first_over_by is not None and sent <= MAX_UPLOAD < sent + size:
            yield MAX_UPLOAD - sent + first_over_by
            return
        yield piece
        sent += piece


@pytest.mark.parametrize(
    ("piece", "over_by"),
    [(64 * 1024, None), (1_000_003, None), (64 * 1024, 1)],
    ids=["64KiB-chunks", "odd-chunks", "one-byte-over"],
)
async def test_streamed_body_growing_past_the_cap_is_413_and_leaves_nothing(scope_url, scope_dirs, piece, over_by):
    """No Content-Length (chunked): the cap is enforced while the body arrives."""
    reader, writer, base = await _open(scope_url)

    async def pump() -> None:
        try:
            for size in _pieces(piece, over_by):
                writer.write(b"%x\r\n" % size + b"\x02" * size + b"\r\n")
                await writer.drain()
            if over_by is None:
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    writer.write(_upload_head(base, "stream.mp4", "Transfer-Encoding: chunked\r\n"))
    pumping = asyncio.ensure_future(pump())
    try:
        status, _headers, body = await asyncio.wait_for(_read_reply(reader), 30)
    finally:
        pumping.cancel()
        writer.close()
    assert status == 413, (status, body)
    assert json.loads(body) == {"detail": "File size exceeds maximum of 50MB"}
    await wait_until(lambda: _files(scope_dirs["assets"]) == set(), what="an empty assets folder")
    await wait_until(lambda: not _pending_upload_handlers(), what="upload handlers to finish")


async def test_upload_replaces_an_existing_asset_atomically(scope_url, api, scope_dirs):
    assets = scope_dirs["assets"]
    old, new = _blob(300_000, seed=1), _blob(200_000, seed=2)
    assert (await upload(api, "same.png", old)).status == 200
    assert (assets / "same.png").read_bytes() == old

    # Send half of the new content and hold the rest back: the old file must stay intact.
    reader, writer, base = await _open(scope_url)
    try:
        writer.write(_upload_head(base, "same.png", f"Content-Length: {len(new)}\r\n") + new[:100_000])
        await writer.drain()
        await wait_until(lambda: any(p.stat().st_size >= 100_000 for p in assets.iterdir() if p.name != "same.png"))
        assert (assets / "same.png").read_bytes() == old
        listed = (await api("GET", "api/v1/assets")).json["assets"]
        assert [(a["name"], a["size_mb"]) for a in listed] == [("same", round(len(old) / 1048576, 2))]
        writer.write(new[100_000:])
        await writer.drain()
        status, _headers, body = await asyncio.wait_for(_read_reply(reader), 30)
    finally:
        writer.close()
    assert status == 200, body
    assert (assets / "same.png").read_bytes() == new
    assert sorted(p.name for p in assets.iterdir()) == ["same.png"]


async def test_client_leaving_mid_upload_leaves_no_file(scope_url, api, scope_dirs):
    assets = scope_dirs["assets"]
    reader, writer, base = await _open(scope_url)
    writer.write(_upload_head(base, "gone.png", "Content-Length: 500000\r\n") + b"\x03" * 100_000)
    await writer.drain()
    await wait_until(lambda: any(p.stat().st_size >= 100_000 for p in assets.iterdir()))
    assert _pending_upload_handlers()  # the probe sees the upload in flight
    writer.close()
    await wait_until(lambda: _files(assets) == set(), what="an empty assets folder")
    await wait_until(lambda: not _pending_upload_handlers(), what="upload handlers to finish")
    # The server still works afterwards.
    assert (await upload(api, "after.png", b"ok")).status == 200


# List ---------------------------------------------------------------------------------------


async def test_list_filters_by_type_and_sorts_newest_first(api, scope_dirs, tmp_path):
    assets = scope_dirs["assets"]
    (assets / "sub" / "deep").mkdir(parents=True)
    (assets / "sub" / "deep" / "old.jpg").write_bytes(b"j" * 2048)
    (assets / "notes.txt").write_text("not an asset")
    (assets / "weights.safetensors").write_bytes(b"w")
    (assets / ".upload-leftover.png").write_bytes(b"hidden")
    probe = tmp_path / "clock-probe"
    await _clock_past(assets / "sub" / "deep" / "old.jpg", probe)
    assert (await upload(api, "a.png", b"a")).status == 200
    await _clock_past(assets / "a.png", probe)
    assert (await upload(api, "clip.mp4", b"m" * 10)).status == 200
    await _clock_past(assets / "clip.mp4", probe)
    assert (await upload(api, "b.webp", b"b")).status == 200

    everything = (await api("GET", "api/v1/assets")).json
    assert set(everything) == {"assets"}
    listed = everything["assets"]
    assert [(a["name"], a["folder"], a["type"]) for a in listed] == [
        ("b", None, "image"),
        ("clip", None, "video"),
        ("a", None, "image"),
        ("old", "sub/deep", "image"),
    ]
    assert [a["created_at"] for a in listed] == sorted((a["created_at"] for a in listed), reverse=True)
    old = listed[-1]
    assert old["path"] == str((assets / "sub" / "deep" / "old.jpg").resolve())
    assert old["size_mb"] == 0.0 and old["created_at"] == pytest.approx((assets / "sub/deep/old.jpg").stat().st_ctime)

    images = (await api("GET", "api/v1/assets?type=image")).json["assets"]
    assert [a["name"] for a in images] == ["b", "a", "old"]
    videos = (await api("GET", "api/v1/assets?type=video")).json["assets"]
    assert [a["name"] for a in videos] == ["clip"]
    for kind in ("other", "IMAGE", "images", ""):  # any value but image/video: nothing
        reply = await api("GET", f"api/v1/assets?type={kind}")
        assert reply.status == 200
        assert reply.json == {"assets": []}, kind


async def test_list_of_an_empty_assets_dir(api):
    reply = await api("GET", "api/v1/assets")
    assert reply.status == 200
    assert reply.json == {"assets": []}


# Serve --------------------------------------------------------------------------------------


MIME = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".bmp": "image/bmp",
    ".mp4": "video/mp4", ".avi": "video/x-msvideo", ".mov": "video/quicktime", ".mkv": "video/x-matroska",
    ".webm": "video/webm", ".txt": "application/octet-stream", ".bin": "application/octet-stream",
    ".PNG": "image/png",
}


@pytest.mark.parametrize("suffix", sorted(MIME))
async def test_serve_with_the_mime_type_of_the_extension(api, scope_dirs, suffix):
    data = _blob(70_000, seed=len(suffix))
    (scope_dirs["assets"] / f"file{suffix}").write_bytes(data)
    reply = await api("GET", f"api/v1/assets/file{suffix}")
    assert reply.status == 200
    assert reply.headers["Content-Type"].split(";")[0] == MIME[suffix]
    assert reply.body == data


async def test_serve_uploaded_asset_and_sub_folders(api, scope_dirs):
    data = _blob(3 * 1024 * 1024 + 17)  # more than one read chunk
    asset = (await upload(api, "ref.jpeg", data)).json
    reply = await api("GET", "api/v1/assets/ref.jpeg")
    assert reply.status == 200 and reply.body == data
    assert reply.headers["Content-Type"].startswith("image/jpeg")
    assert int(reply.headers["Content-Length"]) == len(data)

    # The absolute path the list reports is also accepted (it is inside the dir).
    reply = await api("GET", "api/v1/assets/" + quote(asset["path"], safe=""))
    assert reply.status == 200 and reply.body == data

    deep = scope_dirs["assets"] / "sets" / "one two"
    deep.mkdir(parents=True)
    (deep / "clip.mov").write_bytes(b"movie")
    reply = await api("GET", "api/v1/assets/sets/one%20two/clip.mov")
    assert reply.status == 200 and reply.body == b"movie"
    assert reply.headers["Content-Type"].startswith("video/quicktime")
    reply = await api("GET", "api/v1/assets/sets/../sets/one%20two/clip.mov")
    assert reply.status == 200 and reply.body == b"movie"


@pytest.fixture
def outside(tmp_path, scope_dirs):
    """Files outside the assets dir, including a sibling whose name starts with 'assets'."""
    sibling = tmp_path / "assets2"
    sibling.mkdir()
    (sibling / "x.png").write_bytes(b"sibling secret")
    (tmp_path / "secret.png").write_bytes(b"parent secret")
    return tmp_path


@pytest.mark.parametrize(
    "make_path",
    [
        lambda tmp: "../secret.png",
        lambda tmp: "..%2Fsecret.png",
        lambda tmp: "%2E%2E/secret.png",
        lambda tmp: "sub/../../secret.png",
        lambda tmp: "../assets2/x.png",
        lambda tmp: quote(str(tmp / "assets2" / "x.png"), safe=""),
        lambda tmp: quote(str(tmp / "secret.png"), safe=""),
        lambda tmp: quote(str(tmp / "assets") + "2/x.png", safe=""),
        lambda tmp: "..",
        lambda tmp: "../assets2",
    ],
    ids=["dotdot", "encoded-slash", "encoded-dots", "nested", "sibling-relative", "sibling-absolute",
         "parent-absolute", "prefix-absolute", "bare-dotdot", "sibling-dir"],
)
async def test_paths_outside_the_assets_dir_are_403(api, outside, make_path):
    reply = await api("GET", "api/v1/assets/" + make_path(outside))
    assert reply.status == 403, (reply.status, reply.body)
    assert reply.json == {"detail": "Invalid path"}
    assert b"secret" not in reply.body


async def test_symlinks_pointing_outside_are_403(api, scope_dirs, outside):
    assets = scope_dirs["assets"]
    (assets / "link.png").symlink_to(outside / "secret.png")
    (assets / "linkdir").symlink_to(outside / "assets2", target_is_directory=True)
    (assets / "real.png").write_bytes(b"inside")
    (assets / "alias.png").symlink_to(assets / "real.png")
    for path in ("link.png", "linkdir/x.png"):
        reply = await api("GET", f"api/v1/assets/{path}")
        assert reply.status == 403, path
        assert reply.json == {"detail": "Invalid path"}
    reply = await api("GET", "api/v1/assets/alias.png")
    assert reply.status == 200 and reply.body == b"inside"


@pytest.mark.parametrize("path", ["missing.png", "sub/missing.mp4", "sub", "."])
async def test_missing_asset_is_404(api, scope_dirs, path):
    (scope_dirs["assets"] / "sub").mkdir()
    reply = await api("GET", f"api/v1/assets/{path}")
    assert reply.status == 404, (reply.status, reply.body)
    assert reply.json == {"detail": "Asset not found"}


# LoRA ---------------------------------------------------------------------------------------


async def test_lora_list_empty(api):
    reply = await api("GET", "api/v1/lora/list")
    assert reply.status == 200
    assert reply.json == {"lora_files": []}


async def test_lora_list_without_the_directory(api, scope_dirs):
    scope_dirs["lora"].rmdir()
    reply = await api("GET", "api/v1/lora/list")
    assert reply.status == 200
    assert reply.json == {"lora_files": []}


async def test_lora_list_recurses_and_sorts_by_folder_then_name(api, scope_dirs):
    lora = scope_dirs["lora"]
    sizes = {
        "pixar.safetensors": 3 * 1024 * 1024 + 5000,
        "Anime.BIN": 1000,
        "zeta.pt": 10,
        "styles/b.Safetensors": 524288,
        "styles/a.PT": 1,
        "styles/deep/c.bin": 2048,
        "other/x.txt": 5,
        "readme.md": 5,
        "model.ckpt": 5,
        "weights.pth": 5,
    }
    for rel, size in sizes.items():
        path = lora / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * size)
    (lora / "empty-folder").mkdir()

    reply = await api("GET", "api/v1/lora/list")
    assert reply.status == 200
    files = reply.json["lora_files"]
    assert [(f["folder"], f["name"]) for f in files] == [
        (None, "Anime"),
        (None, "pixar"),
        (None, "zeta"),
        ("styles", "a"),
        ("styles", "b"),
        ("styles/deep", "c"),
    ]
    by_name = {f["name"]: f for f in files}
    for rel in ("pixar.safetensors", "Anime.BIN", "zeta.pt", "styles/b.Safetensors", "styles/a.PT", "styles/deep/c.bin"):
        entry = by_name[Path(rel).stem]
        assert set(entry) == {"name", "path", "size_mb", "folder"}
        assert entry["path"] == str((lora / rel).resolve())
        assert entry["size_mb"] == round(sizes[rel] / (1024 * 1024), 2)
    assert by_name["pixar"]["size_mb"] == 3.0
    assert by_name["b"]["size_mb"] == 0.5
