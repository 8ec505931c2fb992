"""Assets (uploaded images and videos) and LoRA files."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from jupyter_server.auth.decorator import allow_unauthenticated
from tornado import web

from scope.paths import PathOutside, is_plain_file_name, resolve_inside
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
LORA_SUFFIXES = (".safetensors", ".bin", ".pt")
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
#: How much (and how long) an oversized upload is still read and dropped after its 413.
DRAIN_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 2.0
UPLOAD_PREFIX = ".upload-"
CHUNK_BYTES = 1024 * 1024


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "image" if suffix in IMAGE_TYPES else "video" if suffix in VIDEO_TYPES else None


def _folder(root: Path, path: Path) -> str | None:
    parent = path.parent.relative_to(root)
    return None if str(parent) == "." else parent.as_posix()


def _size_mb(stat: os.stat_result) -> float:
    return round(stat.st_size / (1024 * 1024), 2)


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


def list_assets(root: Path, kind: str | None) -> list[dict[str, Any]]:
    if not root.is_dir():
        return []
    found = [
        describe_asset(root, path)
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".") and _kind(path) and (kind is None or _kind(path) == kind)
    ]
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
class AssetsHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/assets"
    operations = {
        "get": Operation(
            "List images and videos in the assets directory",
            AssetsResponse,
            query={"type": ("string", False, "'image' or 'video'; omitted: both")},
            tags=("assets",),
        ),
        "post": Operation(
            "Upload an asset (raw bytes, at most 50 MiB)",
            Asset,
            query={"filename": ("string", True, "File name with an image or video extension")},
            errors={400: "Bad file name or type", 413: "Larger than 50 MiB", 422: "Missing filename"},
            request_content="application/octet-stream",
            tags=("assets",),
        ),
    }

    _temp = None
    _written = 0
    _refused = False

    async def prepare(self) -> None:
        await super().prepare()
        if self.request.method != "POST":
            return
        filename = self.query("filename", required=True)
        if not is_plain_file_name(filename):
            raise ApiError(400, "Invalid file name: give a bare name without folders, '..' or a leading dot.")
        if _kind(Path(filename)) is None:
            allowed = ", ".join(sorted({*IMAGE_TYPES, *VIDEO_TYPES}))
            raise ApiError(400, f"Invalid file type. Allowed types: {allowed}")
        declared = self.request.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > MAX_UPLOAD_BYTES:
            raise ApiError(413, "File size exceeds maximum of 50MB")
        root = self.scope.settings.assets_path
        root.mkdir(parents=True, exist_ok=True)
        self._temp = tempfile.NamedTemporaryFile(dir=root, prefix=UPLOAD_PREFIX, delete=False)

    def data_received(self, chunk: bytes) -> None:
        self._written += len(chunk)
        if self._refused:
            # The 413 is out; keep reading (and dropping) a while, because closing with unread
            # data resets the connection and the client could lose the answer.
            if self._written > MAX_UPLOAD_BYTES + DRAIN_BYTES and not self._finished:
                self.finish()
            return
        if self._temp is None:
            return  # GET bodies are ignored
        if self._written > MAX_UPLOAD_BYTES:
            self._discard()
            self._refuse_too_large()
            return
        self._temp.write(chunk)

    def _refuse_too_large(self) -> None:
        """Answer 413 at once (errors raised in data_received never become a response)."""
        body = json.dumps({"detail": "File size exceeds maximum of 50MB"}).encode()
        self._refused = True
        self.set_status(413)
        self.set_header("Content-Type", "application/json")
        self.set_header("Content-Length", str(len(body)))
        if self.open_api:
            self.set_header("Access-Control-Allow-Origin", "*")
        self.write(body)
        self.flush()
        loop = asyncio.get_running_loop()
        loop.call_later(DRAIN_SECONDS, lambda: None if self._finished else self.finish())

    def _discard(self) -> None:
        if self._temp is not None:
            self._temp.close()
            Path(self._temp.name).unlink(missing_ok=True)
            self._temp = None

    def on_connection_close(self) -> None:
        self._discard()
        super().on_connection_close()

    def on_finish(self) -> None:
        self._discard()  # only leftovers: a completed upload was renamed already

    @allow_unauthenticated
    async def get(self) -> None:
        kind = self.get_query_argument("type", None)
        root = self.scope.settings.assets_path
        if kind not in (None, "image", "video"):
            self.reply({"assets": []})
            return
        assets = await asyncio.get_running_loop().run_in_executor(None, list_assets, root, kind)
        self.reply({"assets": assets})

    @allow_unauthenticated
    async def post(self) -> None:
        if self._refused:
            self.finish()  # the 413 went out already; the rest of the body has been read
            return
        root = self.scope.settings.assets_path
        target = root / self.get_query_argument("filename")
        temp, self._temp = self._temp, None
        temp.flush()
        os.fsync(temp.fileno())
        temp.close()
        os.replace(temp.name, target)
        self.reply(describe_asset(root, target))


class AssetFileHandler(ScopeHandler):
    pattern = r"/api/v1/assets/(?P<asset_path>.+)"
    openapi_path = "/api/v1/assets/{asset_path}"
    operations = {
        "get": Operation(
            "Serve an asset file",
            content="application/octet-stream",
            errors={403: "Path outside the assets directory", 404: "No such asset"},
            tags=("assets",),
        )
    }

    @allow_unauthenticated
    async def get(self, asset_path: str) -> None:
        root = self.scope.settings.assets_path
        try:
            path = resolve_inside(root, asset_path)
        except PathOutside:
            raise ApiError(403, "Invalid path") from None
        if not path.is_file():
            raise ApiError(404, "Asset not found")
        suffix = path.suffix.lower()
        self.set_header("Content-Type", IMAGE_TYPES.get(suffix) or VIDEO_TYPES.get(suffix) or "application/octet-stream")
        self.set_header("Content-Length", str(path.stat().st_size))
        with path.open("rb") as handle:
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
