"""The weights every Wan pipeline loads: generator, VAE, text encoder, and where they live."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from scope.models.artifacts import UMT5_ENCODER, VACE, WAN_1_3B, Artifact, local_path
from scope.pipelines.wan.device import compute_device

logger = logging.getLogger(__name__)

TEXT_ENCODER_FILE = UMT5_ENCODER.files[0]
TOKENIZER_DIR = "google/umt5-xxl"


class MissingModelFiles(FileNotFoundError):
    """Some files a pipeline needs are not in the models directory."""

    def __init__(self, pipeline_id: str, missing: list[Path]):
        names = ", ".join(str(p) for p in missing[:4]) + (" ..." if len(missing) > 4 else "")
        super().__init__(
            f"model files for {pipeline_id} are missing ({names}). Download them with "
            f"'download_models --pipeline {pipeline_id}', or write synthetic ones with "
            f"'download_models --pipeline {pipeline_id} --synthetic'."
        )
        self.missing = missing


@dataclass(frozen=True)
class WanPaths:
    """The files of one Wan pipeline, resolved inside the models directory."""

    config: Path
    generator: Path
    lora: Path | None
    text_encoder: Path
    tokenizer: Path
    #: The VACE module, when VACE is enabled.
    vace: Path | None = None

    @classmethod
    def resolve(
        cls,
        models_dir: Path,
        generator: tuple[Artifact, str],
        lora: tuple[Artifact, str] | None = None,
        *,
        vace: bool = False,
        config: tuple[Artifact, str] = (WAN_1_3B, "config.json"),
    ) -> "WanPaths":
        """The files under ``models_dir``; ``config`` is the architecture's ``config.json`` (the
        1.3B one unless the generator is another size: Krea's 14B)."""
        return cls(
            config=local_path(models_dir, *config),
            generator=local_path(models_dir, *generator),
            lora=local_path(models_dir, *lora) if lora else None,
            text_encoder=local_path(models_dir, UMT5_ENCODER, TEXT_ENCODER_FILE),
            tokenizer=local_path(models_dir, WAN_1_3B, TOKENIZER_DIR),
            vace=local_path(models_dir, VACE, VACE.files[0]) if vace else None,
        )

    def check(self, pipeline_id: str) -> None:
        """Fail with one clear message listing every missing file."""
        paths = [self.config, self.generator, self.text_encoder, self.tokenizer]
        paths += [path for path in (self.lora, self.vace) if path is not None]
        missing = [p for p in paths if not p.exists()]
        if missing:
            raise MissingModelFiles(pipeline_id, missing)


@dataclass(frozen=True)
class UserLora:
    """A user LoRA to apply: its resolved file, its scale and how it is applied."""

    path: Path
    scale: float
    merge_mode: str  # "permanent_merge" or "runtime_peft"


@dataclass
class WanComponents:
    """Loaded, read-only modules shared by every stream of a pipeline.

    ``runtime_loras`` holds the user LoRAs kept apart from the weights (None without any); each
    stream sets its own scales on it before its forwards.
    """

    generator: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: object
    device: torch.device
    dtype: torch.dtype
    runtime_loras: object | None = None
    user_loras: tuple[UserLora, ...] = ()

    @classmethod
    def load(
        cls,
        paths: WanPaths,
        models_dir: Path,
        *,
        vae_type: str,
        quantization: str | None,
        user_loras: tuple[UserLora, ...] = (),
        fuse_qkv: bool = False,
    ) -> "WanComponents":
        from scope.pipelines.wan.autoencoders import load_vae
        from scope.pipelines.wan.loading import load_generator
        from scope.pipelines.wan.text_encoder import TextEncoder

        device, dtype = compute_device()
        logger.info("loading Wan components on %s (%s)", device, dtype)
        logger.info("loading the diffusion transformer (%s)", paths.generator.name)
        merged = [(lora.path, lora.scale) for lora in user_loras if lora.merge_mode == "permanent_merge"]
        generator = load_generator(
            paths.config,
            paths.generator,
            lora_path=paths.lora,
            device=device,
            dtype=dtype,
            quantization=quantization,
            merged_loras=merged,
            vace_path=paths.vace,
            fuse_qkv=fuse_qkv,
        )
        runtime_loras = None
        kept = [lora for lora in user_loras if lora.merge_mode == "runtime_peft"]
        if kept:
            from scope.pipelines.wan.lora import RuntimeLoras, read_lora

            logger.info("keeping %d LoRA adapter(s) apart from the weights", len(kept))
            runtime_loras = RuntimeLoras(generator, [read_lora(lora.path, generator) for lora in kept], device, dtype)
        logger.info("loading the VAE (%s)", vae_type)
        vae = load_vae(vae_type, models_dir, device=device, dtype=dtype)
        logger.info("loading the text encoder")
        text_encoder = TextEncoder.load(paths.text_encoder, paths.tokenizer, device=device, dtype=dtype)
        return cls(generator, vae, text_encoder, device, dtype, runtime_loras, tuple(user_loras))

    def release(self) -> None:
        """Drop the modules; the caller collects garbage and empties device caches."""
        if self.runtime_loras is not None:
            self.runtime_loras.remove()
        self.generator = self.vae = self.text_encoder = self.runtime_loras = None  # type: ignore[assignment]
