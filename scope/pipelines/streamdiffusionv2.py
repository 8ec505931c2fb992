"""``streamdiffusionv2``: StreamDiffusionV2 on the Wan2.1 causal core, video-to-video first.

What differs from LongLive: one latent frame per chunk (four input frames in, four out; two
latent frames and five pixel frames at a stream start), a 6-frame cache whose first three
frames, once written by the first chunks' clean passes, stay as the sink while the other three
roll; every pass of a chunk rewrites its slots (no recompute rule); two steps, ``[750, 250]``,
under a timestep shift of 8; input video encoded *without* latent normalisation (the model was
trained on raw latent means; decoding still de-normalises); and a motion-aware noise controller
that smooths from the pipeline's 0.7 on every chunk, as the reference does, unless
``smooth_noise_scale`` asks it to smooth from its own previous value.
"""

from __future__ import annotations

import dataclasses

from pydantic import Field

from scope.models.artifacts import PIPELINE_ARTIFACTS, STREAMDIFFUSIONV2_GENERATOR
from scope.pipelines.registry import register
from scope.pipelines.sizes import multiple_of
from scope.pipelines.wan.causal_pipeline import DEFAULT_SEED, CausalLoadParams, CausalWanPipeline, causal_info
from scope.pipelines.wan.causal_stream import CausalStreamSettings
from scope.pipelines.wan.config_schema import VaeType, WanPipelineConfig

#: StreamDiffusionV2's model.yaml and attention (its sink of 3 is fixed in its attention code;
#: its wrapper's default shift applies, as its model.yaml names no base model kwargs).
SETTINGS = CausalStreamSettings(
    frames_per_block=1,
    local_attn_size=6,
    sink_size=3,
    timestep_shift=8.0,
    recache_on_prompt_change=False,
    protect_sink=False,
    normalize_video_latents=False,
    noise_scale_from_default=True,
)

DEFAULT_SIZE, MIN_SIZE = 512, 64
DEFAULT_STEPS = [750, 250]
NOISE_SCALE, NOISE_CONTROLLER = 0.7, True
#: What the UI switches to in text mode (the reference UI's hints; the pipeline's own step list
#: stays ``[750, 250]`` in both modes).
TEXT_MODE_DEFAULTS = {"height": DEFAULT_SIZE, "width": DEFAULT_SIZE, "denoising_steps": [1000, 750]}
VAE_IGNORED = "Accepted and ignored: StreamDiffusionV2 always uses the full Wan VAE."

FrameSize = multiple_of(16, MIN_SIZE, 2048)


class StreamDiffusionV2LoadParams(CausalLoadParams):
    """Load parameters of ``streamdiffusionv2``: the causal Wan ones at 512x512 (64..2048), a
    ``vae_type`` kept for compatibility, and the controller's smoothing."""

    height: FrameSize = Field(DEFAULT_SIZE, description="Output height in pixels (a multiple of 16, 64..2048).")
    width: FrameSize = Field(DEFAULT_SIZE, description="Output width in pixels (a multiple of 16, 64..2048).")
    vae_type: VaeType = Field("wan", description=VAE_IGNORED)
    smooth_noise_scale: bool = Field(
        False,
        description="Noise controller: smooth each chunk's noise scale from the previous chunk's "
        "(10 % of it). false, as the reference: from the sent noise_scale, else 0.7, on every chunk.",
    )


StreamDiffusionV2Config = WanPipelineConfig.variant(
    "StreamDiffusionV2Config",
    "The configuration schema advertised for ``streamdiffusionv2`` (UI hints and defaults).",
    descriptions={"vae_type": VAE_IGNORED},
    height=DEFAULT_SIZE,
    width=DEFAULT_SIZE,
    base_seed=DEFAULT_SEED,
    denoising_steps=DEFAULT_STEPS,
    noise_scale=NOISE_SCALE,
    noise_controller=NOISE_CONTROLLER,
    input_size=SETTINGS.frames_per_block * 4,
)


@register
class StreamDiffusionV2Pipeline(CausalWanPipeline):
    info = causal_info(
        id="streamdiffusionv2",
        name="StreamDiffusionV2",
        description="Live video-to-video on Wan2.1-1.3B from the creators of StreamDiffusion: one "
        "latent frame per chunk, a 3-frame sink, a motion-aware noise controller; text-to-video too.",
        docs_url="https://github.com/daydreamlive/scope/blob/main/src/scope/core/pipelines/streamdiffusionv2/docs/usage.md",
        default_mode="video",
        min_dimension=MIN_SIZE,
    )
    load_params_model = StreamDiffusionV2LoadParams
    config_model = StreamDiffusionV2Config
    mode_defaults = {
        "video": {"noise_scale": NOISE_SCALE, "noise_controller": NOISE_CONTROLLER},
        "text": TEXT_MODE_DEFAULTS,
    }
    artifacts = PIPELINE_ARTIFACTS["streamdiffusionv2"]
    settings = SETTINGS
    generator_file = (STREAMDIFFUSIONV2_GENERATOR, STREAMDIFFUSIONV2_GENERATOR.files[0])
    default_steps = DEFAULT_STEPS
    fixed_vae_type = "wan"
    #: The reference's front ends offer VACE for StreamDiffusionV2 in text mode only.
    vace_in_video_mode = False

    def stream_settings(self) -> CausalStreamSettings:
        if self.load_params.smooth_noise_scale:
            return dataclasses.replace(self.settings, controller_smooths_own_output=True)
        return self.settings
