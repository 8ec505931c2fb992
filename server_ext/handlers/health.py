"""Health, hardware and log endpoints."""

from __future__ import annotations

import asyncio
import datetime
import functools
import sys

import psutil
from jupyter_server.auth.decorator import allow_unauthenticated

from scope.server_ext.api_models import HardwareInfo, HealthResponse
from scope.server_ext.handlers.base import ApiError, Operation, ScopeHandler


class HealthHandler(ScopeHandler):
    pattern = openapi_path = "/health"
    operations = {"get": Operation("Health check", HealthResponse, tags=("health",), null_origin=True)}

    @allow_unauthenticated
    def get(self) -> None:
        self.reply(HealthResponse(status="healthy", timestamp=datetime.datetime.now().isoformat()))


@functools.lru_cache(maxsize=1)
def _hardware() -> HardwareInfo:
    """Query the device once: importing torch and CUDA is slow and the answer never changes."""
    vram_gb, name, cuda = None, "cpu", False
    try:
        import torch

        if torch.cuda.is_available():
            cuda = True
            props = torch.cuda.get_device_properties(0)
            vram_gb, name = props.total_memory / 1024**3, props.name
    except ImportError:
        pass
    return HardwareInfo(
        vram_gb=vram_gb,
        spout_available=sys.platform == "win32",
        device_name=name,
        cuda_available=cuda,
        ram_gb=round(psutil.virtual_memory().total / 1024**3, 2),
    )


class HardwareInfoHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/hardware/info"
    operations = {
        "get": Operation(
            "Hardware info (VRAM, device, RAM, Spout availability)", HardwareInfo, tags=("health",), null_origin=True
        )
    }

    @allow_unauthenticated
    async def get(self) -> None:
        info = await asyncio.get_running_loop().run_in_executor(None, _hardware)
        self.reply(info)


class CurrentLogHandler(ScopeHandler):
    pattern = openapi_path = "/api/v1/logs/current"
    operations = {
        "get": Operation(
            "Download this server's own log (never another server's in a shared logs directory)",
            content="text/plain",
            errors={404: "No log file yet"},
            tags=("health",),
        )
    }

    @allow_unauthenticated
    async def get(self) -> None:
        log_file = self.scope.logs.current_file()
        if log_file is None:
            raise ApiError(404, "Log file not found. The server has not written a log yet.")
        text = await asyncio.get_running_loop().run_in_executor(
            None, lambda: log_file.read_bytes().decode("utf-8", errors="replace")
        )
        self.set_header("Content-Disposition", f'attachment; filename="{log_file.stem}.txt"')
        self.finish(text, set_content_type="text/plain; charset=utf-8")
