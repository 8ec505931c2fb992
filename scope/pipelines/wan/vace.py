"""VACE's hint layers on the causal Wan generator (the 1.3B ``Wan2_1-VACE_module``).

A VACE context (96 channels per latent frame: inactive and reactive control latents, then the
mask's 64 channels) runs through its own transformer blocks, one for every second generator
layer. Block 0 adds the chunk's patch-embedded latents to the embedded context; each block
attends over the context alone, with no KV cache and RoPE from frame 0, and emits a hint
(``after_proj``) that the generator adds, times ``vace_context_scale``, to the output of the
layer it belongs to. Only denoising steps carry a context; the clean pass and the re-cache
never do, so a chunk's conditioning reaches later chunks only through its latents.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .config import WanConfig
from .loading import CheckpointError, load_strict, read_state_dict, require_tensors
from .rope import FrameRope
from .transformer import CausalWanTransformer, WanBlock

#: Channels of a VACE context frame: 16 inactive + 16 reactive latent channels + 64 mask channels.
VACE_IN_DIM = 96
#: The reference's uncached attention pads its tokens to a multiple of this for its kernel.
REFERENCE_PADDING = 128
#: The key prefixes of a VACE module; a full VACE checkpoint is filtered down to them.
VACE_PREFIXES = ("vace_blocks.", "vace_patch_embedding.")


@dataclass(frozen=True)
class VaceContext:
    """One chunk's VACE conditioning, as the generator takes it.

    ``latents`` is ``[B, S, 96, h, w]``. Its first ``lead_frames`` frames are context ahead of
    the chunk (extra reference images); the next ``F`` line up with the chunk's latent frames,
    and the generator cuts or zero-pads the context to exactly ``lead_frames + F``.
    """

    latents: torch.Tensor
    scale: float = 1.0
    lead_frames: int = 0
    #: Mask the zero keys the reference pads the hint blocks' attention with (off: as the reference).
    mask_padding: bool = False


class VaceBlock(WanBlock):
    """A generator block with the projections VACE adds: ``before_proj`` (block 0) and ``after_proj``."""

    def __init__(self, config: WanConfig, block_id: int):
        super().__init__(config)
        if block_id == 0:
            self.before_proj = nn.Linear(config.dim, config.dim)
        self.after_proj = nn.Linear(config.dim, config.dim)


class VaceLayers(nn.Module):
    """``vace_blocks.*`` and ``vace_patch_embedding.*`` with the module file's key names."""

    def __init__(self, config: WanConfig, in_dim: int = VACE_IN_DIM):
        super().__init__()
        #: The generator layer each hint is added after: every second one, from layer 0.
        self.layers = list(range(0, config.num_layers, 2))
        self.vace_blocks = nn.ModuleList(VaceBlock(config, j) for j in range(len(self.layers)))
        self.vace_patch_embedding = nn.Conv3d(in_dim, config.dim, kernel_size=config.patch_size, stride=config.patch_size)

    def hints(
        self,
        model: CausalWanTransformer,
        vace: VaceContext,
        x: torch.Tensor,
        e0: torch.Tensor,
        text: torch.Tensor,
        grid: tuple[int, int, int],
    ) -> dict[int, torch.Tensor]:
        """The hint of each VACE layer for the chunk's tokens ``x`` (``{generator layer: [B, L, dim]}``)."""
        frames, gh, gw = grid
        frame_tokens = gh * gw
        lead = vace.lead_frames
        length = (lead + frames) * frame_tokens
        c = model._patchify(vace.latents, self.vace_patch_embedding)
        if c.shape[1] >= length:
            c = c[:, :length]
        else:
            c = torch.cat([c, c.new_zeros(c.shape[0], length - c.shape[1], c.shape[2])], dim=1)
        if lead:
            x = torch.cat([x.new_zeros(x.shape[0], lead * frame_tokens, x.shape[2]), x], dim=1)
            e0 = torch.cat([e0[:, :1].expand(-1, lead, -1, -1), e0], dim=1)
        rope = FrameRope(model.rope, 0, lead + frames, gh, gw, x.device)
        pad = 0 if vace.mask_padding else REFERENCE_PADDING
        c = self.vace_blocks[0].before_proj(c) + x
        hints = {}
        for layer, block in zip(self.layers, self.vace_blocks):
            c = block(c, e0, rope, text, pad_keys_to=pad)
            hints[layer] = block.after_proj(c)[:, lead * frame_tokens :]
        return hints


def read_vace_module(path: str | Path) -> dict[str, torch.Tensor]:
    """The VACE tensors of ``path``: a VACE module file, or a full VACE checkpoint filtered to them."""
    state = require_tensors(read_state_dict(path), path, "VACE module")
    vace = {key: value for key, value in state.items() if key.startswith(VACE_PREFIXES)}
    if not vace:
        raise CheckpointError(f"{path}: no VACE weights in the file (expected keys under {', '.join(VACE_PREFIXES)})")
    return vace


def load_vace_layers(
    model: CausalWanTransformer, path: str | Path, *, in_dim: int = VACE_IN_DIM
) -> VaceLayers:
    """Attach VACE's layers to ``model`` with the weights of ``path``, in the model's device and dtype.

    Every VACE key must be present with its shape, and the patch embedding must not be all zeros
    (a VACE module saved before training, or a file of zeros, would silently do nothing).
    """
    state = read_vace_module(path)
    config = model.config
    expected = (config.dim, in_dim, *config.patch_size)
    found = state.get("vace_patch_embedding.weight")
    if found is not None and tuple(found.shape) != expected:
        raise CheckpointError(
            f"{path}: vace_patch_embedding.weight is {list(found.shape)}, expected {list(expected)} "
            f"(a VACE module for a {config.dim}-wide generator with {in_dim} context channels)"
        )
    if found is not None and not torch.any(found):
        raise CheckpointError(f"{path}: vace_patch_embedding.weight is all zeros: not a trained VACE module")
    with torch.device("meta"):
        layers = VaceLayers(config, in_dim)
    load_strict(layers, state, path)
    weight = model.patch_embedding.weight
    model.vace = layers.to(device=weight.device, dtype=weight.dtype).eval().requires_grad_(False)
    return model.vace
