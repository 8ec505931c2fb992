"""The objects behind the handlers, built once per server from the settings."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass

from aiortc import RTCIceServer

from scope.config import ScopeSettings
from scope.logs import ServerLog
from scope.models.download import DownloadManager
from scope.models.lora_files import LoraFileCache
from scope.pipelines.base import LoadContext
from scope.recording.jobs import RenderJobs
from scope.recording.service import RecordingService
from scope.server_ext.assets_quota import AssetsQuota, remove_abandoned_uploads
from scope.server_ext.handlers.files import UPLOAD_PREFIX
from scope.server_ext.origins import OriginPolicy
from scope.streaming.host_addresses import restrict_host_addresses
from scope.streaming.ice import IceServerProvider, to_rtc_ice_servers
from scope.streaming.local_worker import LocalWorker, local_devices
from scope.streaming.manager import PipelineManager
from scope.streaming.worker import Worker
from scope.streaming.webrtc import SessionService

logger = logging.getLogger(__name__)

#: An upload temp file untouched this long belongs to no live upload (uploads drain within 2 min).
ABANDONED_UPLOAD_AGE_S = 3600.0


@dataclass
class ScopeServices:
    settings: ScopeSettings
    manager: PipelineManager
    sessions: SessionService
    downloads: DownloadManager
    ice: IceServerProvider
    logs: ServerLog
    assets_quota: AssetsQuota
    #: Which web pages may call the open API (the settings, parsed once).
    origins: OriginPolicy
    #: The LoRA directory's quota (uploads and URL installs), and what its files hold.
    lora_quota: AssetsQuota
    lora_files: LoraFileCache
    #: Render jobs (timelines rendered into MP4s beside the live sessions).
    renders: RenderJobs

    @classmethod
    def create(cls, settings: ScopeSettings) -> "ScopeServices":
        settings.ensure_dirs()
        if settings.ice_host_addresses:
            restrict_host_addresses(settings.ice_host_addresses)
        context = LoadContext(models_dir=settings.models_path, lora_dir=settings.lora_path, assets_dir=settings.assets_path)
        manager = PipelineManager(
            context,
            make_workers(settings, context),
            memory_budget_bytes=settings.pipeline_memory_budget_bytes,
            synthetic_fallback=settings.synthetic,
        )
        ice = IceServerProvider.from_env(
            cloudflare_url=settings.cloudflare_turn_url,
            twilio_base_url=settings.twilio_base_url,
            stun_fallback=settings.stun_fallback,
        )

        async def server_ice_servers() -> list[RTCIceServer]:
            own = [RTCIceServer(urls=url) for url in settings.server_ice_servers]
            return own + to_rtc_ice_servers(await ice.turn_servers())

        sessions = SessionService(
            manager,
            server_ice_servers,
            max_sessions=settings.max_sessions,
            max_pending=settings.max_pending_sessions,
            disconnect_timeout=settings.disconnect_timeout,
            connect_timeout=settings.connect_timeout,
            max_repeated_failures=settings.max_repeated_chunk_failures,
            recordings=RecordingService(settings.recordings_path, settings.recordings_quota_bytes, settings.max_recording_seconds),
        )
        downloads = DownloadManager(settings.models_path, token=os.environ.get("HF_TOKEN") or None)
        for root in (settings.assets_path, settings.lora_path):
            for path in remove_abandoned_uploads(root, UPLOAD_PREFIX, ABANDONED_UPLOAD_AGE_S):
                logger.info("removed an abandoned upload: %s", path.name)
        assets_quota = AssetsQuota(settings.assets_path, settings.assets_quota_bytes)
        origins = OriginPolicy.from_settings(settings)
        lora_quota = AssetsQuota(settings.lora_path, settings.lora_quota_bytes, "LoRA", "lora_quota_bytes")
        return cls(
            settings, manager, sessions, downloads, ice, ServerLog(settings.logs_path), assets_quota, origins,
            lora_quota=lora_quota, lora_files=LoraFileCache(),
            renders=RenderJobs(manager, settings.recordings_path / "renders", assets_dir=settings.assets_path),
        )

    def open_log(self, console: bool = False) -> None:
        """Start the log file; ``console`` also shows Scope's lines in the terminal (whose
        banner names the file, so this line goes to the file only)."""
        path = self.logs.start(verbose=self.settings.verbose_logging)
        logger.info("Scope server log: %s", path)
        if console:
            self.logs.show_in_terminal()

    async def start(self) -> None:
        """Work that needs the running event loop (watching the workers, pre-warming the pipeline)."""
        await self.manager.start()
        if self.settings.pipeline:
            try:
                await self.manager.request_load(self.settings.pipeline, None)
            except Exception as exc:
                logger.error("cannot pre-warm pipeline %r: %s", self.settings.pipeline, exc)

    async def stop(self) -> None:
        await self.renders.close()
        await self.sessions.close_all()
        try:
            await asyncio.wait_for(self.manager.unload_all(), timeout=30)
        except Exception as exc:
            logger.warning("unloading on shutdown: %s", exc)
        await self.manager.close()
        if self.settings.ray_address:
            disconnect_ray()
        self.logs.stop()


def make_workers(settings: ScopeSettings, context: LoadContext) -> list[Worker]:
    """The workers the settings ask for: Ray actors with ``ray_address``, else one local worker
    per device of ``workers``."""
    common = {"threads": settings.worker_threads, "synthetic_fallback": settings.synthetic, "max_sessions": settings.max_sessions_per_worker}
    if settings.ray_address:
        from scope.streaming.ray_worker import start_ray_workers

        return start_ray_workers(
            settings.ray_address, context, resource=settings.ray_resource, count=settings.ray_workers, **common
        )
    return [LocalWorker(f"local-{index}", device, context, **common) for index, device in enumerate(local_devices(settings.workers))]


def disconnect_ray() -> None:
    from scope.streaming.ray_worker import disconnect_ray as disconnect

    disconnect()
