"""Assets (uploaded images and videos) and LoRA files."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from scope.paths import InvalidPath, PathOutside, file_name_problem, resolve_inside
from scope.server_ext.assets_quota import AssetsQuota, QuotaExceeded
from scope.server_ext.api_models import Asset, AssetsResponse, LoraListResponse
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler

IMAGE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp", ".bmp": "image/bmp"}
VIDEO_TYPES = {
    ".mp4": "video/mp4",
    ".avi": "video/x-msvideo",
    ".mov": "video/quicktime",
    ".mkv": "video/x-matroska",
    ".webm": "video/webm",
}
#: What ``GET /api/v1/lora/list`` lists, as the spec says (``GET /api/v1/loras`` adds ``.pth``).
LORA_SUFFIXES = (".safetensors", ".bin", ".pt")
MIB = 1024 * 1024
#: The largest upload, in MiB; the messages below state it.
MAX_UPLOAD_MIB = 50
MAX_UPLOAD_BYTES = MAX_UPLOAD_MIB * MIB
TOO_LARGE = f"File size exceeds maximum of {MAX_UPLOAD_MIB}MB"
#: A refused upload's body is still read and dropped up to this many bytes (then the connection
#: closes), so clients that send the whole body before reading the answer still read it.
DRAIN_LIMIT_BYTES = 4 * MAX_UPLOAD_BYTES
#: ... and for at most this long: generous, the bound that matters is the one on bytes.
DRAIN_SECONDS = 120.0
UPLOAD_PREFIX = ".upload-"
CHUNK_BYTES = MIB


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_TYPES else "video" if suffix in VIDEO_TYPES else None


def _folder(root: Path, path: Path) -> str | None:
    parent = path.parent.relative_to(root)
    return None if str(parent) == "." else parent.as_posix()


def _size_mb(stat: os.stat_result) -> float:
    return round(stat.st_size / MIB, 2)


def describe_asset(root: Path, path: Path) -> dict[str, Any]:
    stat = path.stat()
    return Asset(
        name=path.stem,
        path=str(path),
        size_mb=_size_mb(stat),
        folder=_folder(root, path),
        type=_kind(path),
        created_at=stat.st_ctime,
    ).model_dump()


def is_hidden(root: Path, path: Path) -> bool:
    """A file or folder name below ``root`` starting with a dot: uploads in progress
    (``.upload-*``) and anything else hidden are never listed nor served."""
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def list_assets(root: Path, kind: str | None) -> list[dict[str, Any]]:
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*"):
        if is_hidden(root, path) or not _kind(path) or (kind is not None and _kind(path) != kind):
            continue
        try:
            if path.is_file():
                found.append(describe_asset(root, path))
        except OSError:
            continue  # removed while listed
    found.sort(key=lambda a: (-a["created_at"], a["folder"] or "", a["name"]))
    return found


def list_loras(root: Path) -> list[dict[str, Any]]:
    if not root.is_dir():
        return []
    found = [
        {"name": path.stem, "path": str(path), "size_mb": _size_mb(path.stat()), "folder": _folder(root, path)}
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in LORA_SUFFIXES
    ]
    found.sort(key=lambda f: (f["folder"] or "", f["name"]))
    return found


@web.stream_request_body
class StreamedUploadHandler(ScopeHandler):
    """A raw-body upload (``POST ...?filename=``) streamed into a temp file in its directory,
    capped and under the directory's quota, renamed into place when complete.

    Subclasses say where (``upload_root``, ``upload_quota``), how large (``max_upload_bytes``),
    which names (``check_upload_name``), how the file is placed and described.
    """

    #: What the directory holds, in messages.
    upload_what = "assets"

    def upload_root(self) -> Path:
        raise NotImplementedError

    def upload_quota(self) -> AssetsQuota:
        raise NotImplementedError

    def max_upload_bytes(self) -> int:
        raise NotImplementedError

    def too_large_detail(self) -> str:
        raise NotImplementedError

    def check_upload_name(self, name: str) -> None:
        """Raise ``ApiError`` for a name (already a bare, clean file name) this directory refuses."""

    def place_upload(self, temp_name: str, target: Path) -> None:
        """Move the complete temp file to ``target`` (atomically; replacing what is there)."""
        os.replace(temp_name, target)

    def describe_upload(self, root: Path, target: Path) -> dict[str, Any]:
        raise NotImplementedError

    _temp = None
    _filename = ""
    _written = 0
    _refused = False
    _gone = False

    async def prepare(self) -> None:
        try:
            await super().prepare()
        except ApiError as exc:
            if self.request.method != "POST":
                raise
            self._refuse(exc.status_code, exc.detail)  # origin, auth, 415: answered the same way
            return
        if self.request.method != "POST":
            return
        # Every refusal below is answered at once and the body is read and dropped
        # (``_refuse``): closing with unread data would reset the connection, and clients that
        # send the whole body before reading (http.client, requests, browsers) would lose the answer.
        try:
            self._filename = self._upload_name()
        except ApiError as exc:
            self._refuse(exc.status_code, exc.detail)
            return
        declared = self._declared_length()
        if declared is not None and declared > self.max_upload_bytes():
            self._refuse(413, self.too_large_detail())
            return
        root = self.upload_root()
        quota = self.upload_quota()
        try:
            root.mkdir(parents=True, exist_ok=True)
            await quota.measure()
            if self._gone:
                return
            self._temp = tempfile.NamedTemporaryFile(dir=root, prefix=UPLOAD_PREFIX, delete=False)
        except OSError as exc:
            self._refuse(*_storage_error(exc, self.upload_what))
            return
        try:
            quota.admit(self, self._temp.name, declared)
        except QuotaExceeded as exc:
            self._discard()
            self._refuse(507, exc.detail)

    def _upload_name(self) -> str:
        """The ``filename`` query value as sent (tornado's own decoding turns NUL into a space)."""
        values = self.request.query_arguments.get("filename") or [b""]
        try:
            name = values[-1].decode("utf-8").strip(" ")
        except UnicodeDecodeError:
            raise ApiError(400, "Invalid filename: it is not valid UTF-8.") from None
        if not name:
            raise ApiError(422, [{"loc": ["query", "filename"], "msg": "Field required", "type": "missing"}])
        problem = file_name_problem(name)
        if problem:
            raise ApiError(400, f"Invalid filename: {problem}.")
        self.check_upload_name(name)
        return name

    def _declared_length(self) -> int | None:
        declared = self.request.headers.get("Content-Length", "")
        return int(declared) if declared.isdigit() else None

    def data_received(self, chunk: bytes) -> None:
        self._written += len(chunk)
        if self._refused:
            # The answer is out; keep reading (and dropping) up to a bound, then close.
            if self._written > DRAIN_LIMIT_BYTES and not self._finished:
                self.finish()
            return
        if self._temp is None:
            return  # GET bodies are ignored
        if self._written > self.max_upload_bytes():
            self._discard()
            self._refuse(413, self.too_large_detail())
            return
        try:
            self.upload_quota().grow(self, self._written)
            self._temp.write(chunk)
        except QuotaExceeded as exc:
            self._discard()
            self._refuse(507, exc.detail)
        except OSError as exc:
            self._discard()
            self._refuse(*_storage_error(exc, self.upload_what))

    def _refuse(self, status: int, detail: Any) -> None:
        """Answer ``status`` at once, then drop the rest of the body (up to ``DRAIN_LIMIT_BYTES``).

        Errors raised in data_received never become a response, and one raised in prepare
        closes the connection with the body unread, so refusals are written here instead.
        """
        body = json.dumps({"detail": detail}).encode()
        self._refused = True
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", str(len(body)))
        if self.open_api:
            self.write_cors_headers()
        self.write(body)
        declared = self._declared_length() or 0
        waits_to_send = self._written == 0 and self.request.headers.get("Expect", "").lower() == "100-continue"
        if waits_to_send or declared > DRAIN_LIMIT_BYTES:
            self.finish()  # nothing worth reading: the client has not sent it, or it is over the bound
            return
        self.flush()
        loop = asyncio.get_running_loop()
        loop.call_later(DRAIN_SECONDS, lambda: None if self._finished else self.finish())

    def _discard(self) -> None:
        """Delete the temp file (if any) and free the quota it reserved."""
        if self._temp is not None:
            temp, self._temp = self._temp, None
            temp.close()
            Path(temp.name).unlink(missing_ok=True)
        self.upload_quota().release(self)

    def on_connection_close(self) -> None:
        self._gone = True
        self._discard()
        super().on_connection_close()

    def on_finish(self) -> None:
        self._discard()  # only leftovers: a completed upload was renamed already

    @allow_unauthenticated
    async def post(self) -> None:
        if self._refused:
            self.finish()  # the refusal went out already; the rest of the body has been read
            return
        root = self.upload_root()
        target = root / self._filename
        temp, self._temp = self._temp, None
        try:
            await asyncio.get_running_loop().run_in_executor(None, _flush_and_close, temp)
            replaced = target.stat().st_size if target.is_file() else 0
            self.place_upload(temp.name, target)
        except OSError as exc:
            Path(temp.name).unlink(missing_ok=True)
            self.upload_quota().release(self)
            raise ApiError(*_storage_error(exc, self.upload_what)) from None
        except ApiError:
            Path(temp.name).unlink(missing_ok=True)
            self.upload_quota().release(self)
            raise
        self.upload_quota().commit(self, target, replaced)
        self.reply(self.describe_upload(root, target))


class AssetsHandler(StreamedUploadHandler):
    pattern = openapi_path = "/api/v1/assets"
    operations = {
        "get": Operation(
            "List images and videos in the assets directory",
            AssetsResponse,
            query={"type": ("string", False, "'image' or 'video'; omitted: both")},
            tags=("assets",),
            null_origin=True,
        ),
        "post": Operation(
            f"Upload an asset (raw bytes, at most {MAX_UPLOAD_MIB} MiB)",
            Asset,
            query={"filename": ("string", True, "File name with an image or video extension")},
            errors={
                400: "Bad file name or type",
                409: "A folder of that name exists",
                413: f"Larger than {MAX_UPLOAD_MIB} MiB",
                422: "Missing filename",
                507: "The assets quota (or the disk) has no room for it",
            },
            request_content="application/octet-stream",
            tags=("assets",),
            null_origin=True,
        ),
    }

    def upload_root(self) -> Path:
        return self.scope.settings.assets_path

    def upload_quota(self) -> AssetsQuota:
        return self.scope.assets_quota

    def max_upload_bytes(self) -> int:
        return MAX_UPLOAD_BYTES

    def too_large_detail(self) -> str:
        return TOO_LARGE

    def check_upload_name(self, name: str) -> None:
        if _kind(Path(name)) is None:
            allowed = ", ".join(sorted({*IMAGE_TYPES, *VIDEO_TYPES}))
            raise ApiError(400, f"Invalid file type. Allowed types: {allowed}")

    def describe_upload(self, root: Path, target: Path) -> dict[str, Any]:
        return describe_asset(root, target)

    @allow_unauthenticated
    async def get(self) -> None:
        kind = self.get_query_argument("type", None)
        root = self.scope.settings.assets_path
        if kind not in (None, "image", "video"):
            self.reply({"assets": []})
            return
        assets = await asyncio.get_running_loop().run_in_executor(None, list_assets, root, kind)
        self.reply({"assets": assets})


def _flush_and_close(temp) -> None:
    """Put an upload's bytes on disk before it is renamed into place (off the event loop)."""
    try:
        temp.flush()
        os.fsync(temp.fileno())
    finally:
        temp.close()


def _storage_error(exc: OSError, what: str = "assets") -> tuple[int, str]:
    """The status and detail for a file system error while storing an upload."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return 507, f"Not enough disk space for the upload: {exc.strerror}."
    if exc.errno == errno.ENAMETOOLONG:
        return 400, "Invalid filename: the file system refuses a name this long."
    if exc.errno == errno.EISDIR:
        return 409, f"Invalid filename: a folder of that name exists in the {what} directory."
    return 500, f"Could not store the upload: {exc.strerror or exc.__class__.__name__}."


class AssetFileHandler(ScopeHandler):
    pattern = r"/api/v1/assets/(?P<asset_path>.+)"
    openapi_path = "/api/v1/assets/{asset_path}"
    operations = {
        "get": Operation(
            "Serve an asset file",
            content=(*dict.fromkeys([*IMAGE_TYPES.values(), *VIDEO_TYPES.values()]), "application/octet-stream"),
            errors={
                400: "A path no file system can hold (a NUL byte, a name over 255 bytes)",
                403: "Path outside the assets directory",
                404: "No such asset (hidden files and uploads in progress included)",
            },
            tags=("assets",),
            null_origin=True,
        )
    }

    @allow_unauthenticated
    async def get(self, asset_path: str) -> None:
        root = self.scope.settings.assets_path
        try:
            path = resolve_inside(root, asset_path)
        except PathOutside:
            raise ApiError(403, "Invalid path") from None
        except InvalidPath as exc:
            raise ApiError(400, f"Invalid asset_path: {exc}.") from None
        named = [part for part in Path(asset_path).parts if part not in (".", "..")]
        if is_hidden(root.resolve(), path) or any(part.startswith(".") for part in named):
            raise ApiError(404, "Asset not found")
        try:
            if not path.is_file():
                raise FileNotFoundError(asset_path)
            handle = path.open("rb")
            size = os.fstat(handle.fileno()).st_size
        except OSError:  # missing, a folder, unreadable
            raise ApiError(404, "Asset not found") from None
        suffix = path.suffix.lower()
        self.set_header("Content-Type", IMAGE_TYPES.get(suffix) or VIDEO_TYPES.get(suffix) or "application/octet-stream")
        self.set_header("Content-Length", str(size))
        with handle:
            while chunk := handle.read(CHUNK_BYTES):
                self.write(chunk)
                await self.flush()
        self.finish(set_content_type=self._headers["Content-Type"])


class LoraListHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/lora/list"
    operations = {"get": Operation("List LoRA files", LoraListResponse, tags=("lora",))}

    @allow_unauthenticated
    async def get(self) -> None:
        files = await asyncio.get_running_loop().run_in_executor(None, list_loras, self.scope.settings.lora_path)
        self.reply({"lora_files": files})
