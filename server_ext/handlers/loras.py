"""Managing LoRA files: list them with what is in them, install one from a URL, upload, delete.

Every file lands the way uploads do: streamed into a temp file in the LoRA directory, capped
(``lora_max_file_bytes``) and under the directory's quota (``lora_quota_bytes``) while it streams,
then renamed into place. A name that exists is refused (409) unless the request says
``overwrite``, and a file the loaded (or loading) pipeline uses is never replaced nor deleted (409).
"""

from __future__ import annotations

import asyncio
import email.message
import errno
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import httpx
from jupyter_server.auth.decorator import allow_unauthenticated
from scope.server_ext.api_models import (
    LoraDeleteResponse,
    LoraEntriesResponse,
    LoraEntry,
    LoraInstallRequest,
    LoraInstallResponse,
)
from scope.server_ext.assets_quota import AssetsQuota, QuotaExceeded
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler
from scope.server_ext.handlers.files import (
    MIB,
    UPLOAD_PREFIX,
    StreamedUploadHandler,
    _flush_and_close,
    _storage_error,
    is_hidden,
)

from scope.models.lora_files import EXAMPLE_TARGETS, LORA_SUFFIXES, LoraFileCache
from scope.paths import InvalidPath, PathOutside, file_name_problem, resolve_inside

CHUNK_BYTES = MIB
CONNECT_TIMEOUT_S = 30.0
READ_TIMEOUT_S = 60.0
ALLOWED = ", ".join(sorted(LORA_SUFFIXES))
ANY_HOST = "*"


# Describing files ----------------------------------------------------------------------------


def describe_lora(root: Path, path: Path, cache: LoraFileCache) -> dict[str, Any]:
    """One entry of ``GET /api/v1/loras`` (hashes and reads the keys once per file version)."""
    size, sha256, summary = cache.describe(path)
    parent = path.parent.relative_to(root)
    targets = None
    if summary.error is None:
        targets = {"count": len(summary.targets), "kinds": summary.kinds, "examples": list(summary.targets[:EXAMPLE_TARGETS])}
    return LoraEntry(
        name=path.stem,
        path=str(path),
        size_mb=round(size / MIB, 2),
        folder=None if str(parent) == "." else parent.as_posix(),
        size_bytes=size,
        sha256=sha256,
        format=summary.format,
        rank=summary.rank,
        targets=targets,
        error=summary.error,
    ).model_dump()


def lora_paths(root: Path) -> list[Path]:
    """LoRA files below ``root`` (hidden ones and uploads in progress left out), in list order."""
    if not root.is_dir():
        return []
    found = [
        path for path in root.rglob("*")
        if path.suffix.lower() in LORA_SUFFIXES and not is_hidden(root, path) and path.is_file()
    ]
    return sorted(found, key=lambda p: (p.parent.relative_to(root).as_posix().removeprefix("."), p.stem))


def list_entries(root: Path, cache: LoraFileCache) -> list[dict[str, Any]]:
    entries = []
    for path in lora_paths(root):
        try:
            entries.append(describe_lora(root, path, cache))
        except OSError:
            continue  # removed while listed
    return entries


# Shared checks ---------------------------------------------------------------------------------


def check_lora_name(name: str, field: list[str]) -> None:
    """A bare file name with a LoRA suffix (400 naming ``field`` otherwise)."""
    problem = file_name_problem(name)
    if problem:
        raise ApiError(400, [{"loc": field, "msg": f"Invalid filename {name[:120]!r}: {problem}.", "type": "value_error"}])
    if Path(name).suffix.lower() not in LORA_SUFFIXES:
        raise ApiError(
            400,
            [{"loc": field, "msg": f"Invalid file type {name[:120]!r}. Allowed types: {ALLOWED}", "type": "value_error"}],
        )


def loras_in_use(scope) -> dict[Path, str]:
    """Resolved paths of the LoRAs the pool's loaded or loading pipelines were asked for -> an id."""
    from scope.pipelines.wan.lora import resolve_lora_path

    lora_dir = scope.settings.lora_path
    used = {}
    for slot in scope.manager.slots():
        for lora in (slot.target.load_params or {}).get("loras") or ():
            path = lora.get("path") if isinstance(lora, dict) else None
            if path:
                used[resolve_lora_path(path, lora_dir)] = slot.target.pipeline_id
    return used


def refuse_if_in_use(scope, target: Path) -> None:
    pipeline_id = loras_in_use(scope).get(target.resolve())
    if pipeline_id is not None:
        raise ApiError(
            409,
            f"LoRA file {target.name!r} is in use by the loaded pipeline {pipeline_id!r} (its "
            "load_params.loras); unload it, or load it without this LoRA, first.",
        )


def refuse_if_taken(scope, target: Path, overwrite: bool, field: list[str]) -> None:
    """409 when ``target`` exists and may not be replaced (no ``overwrite``, a folder, in use)."""
    if target.is_dir():
        raise ApiError(409, f"Invalid filename: a folder named {target.name!r} exists in the LoRA directory.")
    if not target.exists():
        return
    if not overwrite:
        where = "overwrite=true" if field[0] == "query" else '"overwrite": true'
        raise ApiError(409, f"LoRA file {target.name!r} exists; send {where} to replace it.")
    refuse_if_in_use(scope, target)


def place(temp_name: str, target: Path, overwrite: bool) -> None:
    """Rename a complete temp file into place; without ``overwrite`` never replace a file that
    appeared meanwhile (a hard link fails if the name is taken)."""
    if overwrite:
        os.replace(temp_name, target)
        return
    try:
        os.link(temp_name, target)
    except FileExistsError:
        raise ApiError(409, f"LoRA file {target.name!r} exists; it appeared while this one was stored.") from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        if target.exists():  # a file system without hard links: check, then rename
            raise ApiError(409, f"LoRA file {target.name!r} exists; it appeared while this one was stored.") from None
        os.replace(temp_name, target)
        return
    os.unlink(temp_name)


def lora_quota(scope) -> AssetsQuota:
    return scope.lora_quota


def too_large(scope) -> str:
    return f"File size exceeds the LoRA file limit of {scope.settings.lora_max_file_bytes} bytes (ScopeApp.lora_max_file_bytes)"


# GET/POST /api/v1/loras -------------------------------------------------------------------------


class LorasHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/loras"
    operations = {
        "get": Operation("List LoRA files with their format, rank, targets and sha256", LoraEntriesResponse, tags=("lora",)),
        "post": Operation(
            "Install a LoRA file from a URL (or write a synthetic one)",
            LoraInstallResponse,
            LoraInstallRequest,
            errors={
                400: "Bad url (scheme, host not allowed, a page rather than a file) or bad filename",
                409: "A file of that name exists (send overwrite), or it is in use by the loaded pipeline",
                413: "Larger than ScopeApp.lora_max_file_bytes",
                502: "The URL could not be fetched (unreachable, or answered an error)",
                507: "The LoRA quota (or the disk) has no room for it",
            },
            tags=("lora",),
        ),
    }

    @allow_unauthenticated
    async def get(self) -> None:
        loop = asyncio.get_running_loop()
        entries = await loop.run_in_executor(None, list_entries, self.scope.settings.lora_path, self.scope.lora_files)
        self.reply({"lora_files": entries})

    @allow_unauthenticated
    async def post(self) -> None:
        request = self.json_body(LoraInstallRequest)
        if (request.url is None) == (request.synthetic is None):
            raise ApiError(422, [{"loc": ["body", "url"], "msg": "Give exactly one of url and synthetic", "type": "value_error"}])
        installer = UrlInstall(self, request) if request.url is not None else SyntheticInstall(self, request)
        target = await installer.run()
        entry = await asyncio.get_running_loop().run_in_executor(
            None, describe_lora, self.scope.settings.lora_path, target, self.scope.lora_files
        )
        self.reply({"message": f"Successfully installed '{target.name}'", "file": entry})


class _Install:
    """One install into the LoRA directory: a temp file, reserved in the quota, placed at the end."""

    def __init__(self, handler: ScopeHandler, request: LoraInstallRequest):
        self.scope = handler.scope
        self.request = request
        self.root: Path = self.scope.settings.lora_path
        self.temp = None

    def target_for(self, name: str, field: list[str]) -> Path:
        check_lora_name(name, field)
        target = self.root / name
        refuse_if_taken(self.scope, target, self.request.overwrite, ["body", "overwrite"])
        return target

    async def open_temp(self, declared: int | None) -> None:
        if declared is not None and declared > self.scope.settings.lora_max_file_bytes:
            raise ApiError(413, too_large(self.scope))
        quota = lora_quota(self.scope)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            await quota.measure()
            self.temp = tempfile.NamedTemporaryFile(dir=self.root, prefix=UPLOAD_PREFIX, delete=False)
        except OSError as exc:
            raise ApiError(*_storage_error(exc, "LoRA")) from None
        try:
            quota.admit(self, self.temp.name, declared)
        except QuotaExceeded as exc:
            raise ApiError(507, exc.detail) from None

    def write(self, chunk: bytes, written: int) -> None:
        if written > self.scope.settings.lora_max_file_bytes:
            raise ApiError(413, too_large(self.scope))
        try:
            lora_quota(self.scope).grow(self, written)
            self.temp.write(chunk)
        except QuotaExceeded as exc:
            raise ApiError(507, exc.detail) from None
        except OSError as exc:
            raise ApiError(*_storage_error(exc, "LoRA")) from None

    async def finish(self, target: Path) -> Path:
        temp, self.temp = self.temp, None
        try:
            await asyncio.get_running_loop().run_in_executor(None, _flush_and_close, temp)
            refuse_if_taken(self.scope, target, self.request.overwrite, ["body", "overwrite"])
            replaced = target.stat().st_size if target.is_file() else 0
            place(temp.name, target, self.request.overwrite)
        except OSError as exc:
            raise ApiError(*_storage_error(exc, "LoRA")) from None
        finally:
            Path(temp.name).unlink(missing_ok=True)
        lora_quota(self.scope).commit(self, target, replaced)
        self.scope.lora_files.forget(target)
        return target

    def discard(self) -> None:
        if self.temp is not None:
            temp, self.temp = self.temp, None
            temp.close()
            Path(temp.name).unlink(missing_ok=True)
        lora_quota(self.scope).release(self)

    async def run(self) -> Path:
        try:
            return await self.install()
        finally:
            self.discard()

    async def install(self) -> Path:
        raise NotImplementedError


class SyntheticInstall(_Install):
    """A tiny synthetic LoRA for the synthetic generator (no network: the /docs example)."""

    async def install(self) -> Path:
        from scope.models.synthetic.lora import synthetic_lora_bytes
        from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG

        fmt = self.request.synthetic
        target = self.target_for(self.request.filename or f"synthetic-{fmt}.safetensors", ["body", "filename"])
        data = synthetic_lora_bytes(fmt, SYNTHETIC_WAN_CONFIG, 0, suffix=target.suffix)
        await self.open_temp(len(data))
        self.write(data, len(data))
        return await self.finish(target)


class UrlInstall(_Install):
    """Stream the URL's body into the LoRA directory (the reference's ``POST /api/v1/loras``)."""

    async def install(self) -> Path:
        url = self.checked_url(self.request.url)
        target = None
        name = self.request.filename or name_from_url(url)
        if name:
            target = self.target_for(name, ["body", "filename" if self.request.filename else "url"])
        timeout = httpx.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
        try:
            async with httpx.AsyncClient(follow_redirects=True, timeout=timeout, trust_env=False) as client:
                async with client.stream("GET", url) as response:
                    if response.status_code >= 400:
                        raise ApiError(502, f"The URL answered HTTP {response.status_code}; check that it is a download link.")
                    if target is None:
                        name = name_from_response(response)
                        if not name:
                            raise ApiError(400, [{"loc": ["body", "filename"], "msg": "The URL does not name the file; give filename", "type": "missing"}])
                        target = self.target_for(name, ["body", "url"])
                    declared = response.headers.get("Content-Length", "")
                    await self.open_temp(int(declared) if declared.isdigit() else None)
                    written = 0
                    async for chunk in response.aiter_bytes(CHUNK_BYTES):
                        written += len(chunk)
                        self.write(chunk, written)
        except httpx.HTTPError as exc:
            raise ApiError(502, f"Could not fetch the URL: {exc.__class__.__name__}: {exc}") from None
        return await self.finish(target)

    def checked_url(self, url: str) -> str:
        field = ["body", "url"]
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError as exc:
            raise ApiError(400, [{"loc": field, "msg": f"Not a URL: {exc}", "type": "value_error"}]) from None
        if parts.scheme not in ("http", "https") or not host:
            raise ApiError(400, [{"loc": field, "msg": "Give an http(s) URL with a host", "type": "value_error"}])
        allowed = [h.strip().lower() for h in self.scope.settings.lora_url_hosts if h.strip()]
        if ANY_HOST not in allowed and not any(host == h or host.endswith("." + h) for h in allowed):
            raise ApiError(400, [{
                "loc": field,
                "msg": f"Host {host!r} is not one LoRAs may be installed from ({', '.join(allowed) or 'none'}); "
                "add it to ScopeApp.lora_url_hosts",
                "type": "value_error",
            }])
        if host in ("huggingface.co", "hf.co") and "/blob/" in parts.path:
            raise ApiError(400, [{
                "loc": field,
                "msg": "This is a Hugging Face file page, not a download link: use the /resolve/ URL "
                "(\"Copy download link\")",
                "type": "value_error",
            }])
        return url


def name_from_url(url: str) -> str | None:
    """The URL's last path segment, when it has a LoRA suffix."""
    name = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    return name if Path(name).suffix.lower() in LORA_SUFFIXES else None


def name_from_response(response: httpx.Response) -> str | None:
    """The file name of the answer's ``Content-Disposition`` (``filename*`` first), else the last
    segment of the URL it came from after redirects."""
    header = response.headers.get("Content-Disposition")
    if header:
        message = email.message.Message()
        message["Content-Disposition"] = header
        name = message.get_filename()
        if name:
            return name.strip()
    return name_from_url(str(response.url))


# POST /api/v1/loras/upload ---------------------------------------------------------------------


class LoraUploadHandler(StreamedUploadHandler):
    pattern = openapi_path = "/api/v1/loras/upload"
    operations = {
        "post": Operation(
            "Upload a LoRA file (raw bytes, at most ScopeApp.lora_max_file_bytes)",
            LoraEntry,
            query={
                "filename": ("string", True, f"File name with a LoRA extension ({ALLOWED})"),
                "overwrite": ("boolean", False, "Replace a file of that name (otherwise 409)"),
            },
            errors={
                400: "Bad file name or type, or a bad overwrite value",
                409: "A file of that name exists (send overwrite=true), or it is in use by the loaded pipeline",
                413: "Larger than ScopeApp.lora_max_file_bytes",
                422: "Missing filename",
                507: "The LoRA quota (or the disk) has no room for it",
            },
            request_content="application/octet-stream",
            tags=("lora",),
        ),
    }
    upload_what = "LoRA"

    def upload_root(self) -> Path:
        return self.scope.settings.lora_path

    def upload_quota(self) -> AssetsQuota:
        return lora_quota(self.scope)

    def max_upload_bytes(self) -> int:
        return self.scope.settings.lora_max_file_bytes

    def too_large_detail(self) -> str:
        return too_large(self.scope)

    def overwrite(self) -> bool:
        value = (self.get_query_argument("overwrite", "false") or "false").strip().lower()
        if value not in ("true", "false", "1", "0"):
            raise ApiError(400, [{"loc": ["query", "overwrite"], "msg": "Give true or false", "type": "bool_parsing"}])
        return value in ("true", "1")

    def check_upload_name(self, name: str) -> None:
        check_lora_name(name, ["query", "filename"])
        refuse_if_taken(self.scope, self.upload_root() / name, self.overwrite(), ["query", "overwrite"])

    def place_upload(self, temp_name: str, target: Path) -> None:
        overwrite = self.overwrite()
        refuse_if_taken(self.scope, target, overwrite, ["query", "overwrite"])
        place(temp_name, target, overwrite)
        self.scope.lora_files.forget(target)

    def describe_upload(self, root: Path, target: Path) -> dict[str, Any]:
        return describe_lora(root, target, self.scope.lora_files)


# DELETE /api/v1/loras/{name} -------------------------------------------------------------------


class LoraFileHandler(ScopeHandler):
    pattern = r"/api/v1/loras/(?P<name>.+)"
    openapi_path = "/api/v1/loras/{name}"
    operations = {
        "delete": Operation(
            "Delete a LoRA file",
            LoraDeleteResponse,
            errors={
                400: "A name no file system can hold",
                403: "A path outside the LoRA directory",
                404: "No such LoRA file",
                409: "The name matches several files, or the file is in use by the loaded pipeline",
            },
            tags=("lora",),
        ),
    }

    @allow_unauthenticated
    async def delete(self, name: str) -> None:
        root = self.scope.settings.lora_path
        path = self.find(root, name)
        refuse_if_in_use(self.scope, path)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ApiError(404, f"LoRA file {name!r} not found") from None
        except OSError as exc:
            raise ApiError(500, f"Could not delete {path.name!r}: {exc.strerror or exc.__class__.__name__}") from None
        self.scope.lora_files.forget(path)
        self.reply({"success": True, "message": f"Deleted '{path.relative_to(root.resolve()).as_posix()}'"})

    @staticmethod
    def find(root: Path, name: str) -> Path:
        """The file ``name`` means: a file name (``style.safetensors``, ``sub/style.pt``), or a
        stem (``style``) matched in any folder; contained in ``root``, never hidden."""
        named = [part for part in Path(name).parts if part not in (".", "..")]
        candidates = [name] if Path(name).suffix.lower() in LORA_SUFFIXES else [name + s for s in LORA_SUFFIXES]
        base = root.resolve()
        found = []
        for candidate in candidates:
            try:
                path = resolve_inside(root, candidate)
            except PathOutside:
                raise ApiError(403, f"Invalid name {name[:120]!r}: it is outside the LoRA directory") from None
            except InvalidPath as exc:
                raise ApiError(400, f"Invalid name: {exc}.") from None
            if path != base and not is_hidden(base, path) and path.is_file():
                found.append(path)
        if not found and len(named) == 1 and candidates != [name]:
            found = [p for p in lora_paths(base) if p.stem == name]
        if any(part.startswith(".") for part in named) or not found:
            raise ApiError(404, f"LoRA file {name!r} not found")
        if len(found) > 1:
            listed = ", ".join(p.relative_to(base).as_posix() for p in found)
            raise ApiError(409, f"{name!r} matches several LoRA files ({listed}); name one with its extension and folder.")
        return found[0]
