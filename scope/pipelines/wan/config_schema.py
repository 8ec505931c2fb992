"""What every Wan pipeline's configuration schema adds to the common one: the autoencoder."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from scope.pipelines.config_schema import PipelineConfig
from scope.pipelines.wan.autoencoders import VAE_FILES

#: The autoencoders a Wan pipeline can load: those whose weight files are known.
VaeType = Literal[*VAE_FILES]


class WanPipelineConfig(PipelineConfig):
    """Configuration fields of the Wan pipelines; each pipeline's variant sets its step list."""

    denoising_steps: list[int] = Field(description="Denoising timesteps, descending.")
    vae_type: VaeType = Field("wan", description="Autoencoder used to encode and decode frames.")
