"""``memflow``: MemFlow on the Wan2.1 causal core (LongLive's mechanics plus a memory bank).

What differs from LongLive: MemFlow's weights, denoising steps that attend to the cache without
writing it (only the clean pass and the re-cache commit), and the memory bank. Every third
chunk the clean pass records the first frame of its keys and values; the next chunk commits it
to a bank of three frames per layer, and once the bank is full it keeps the two frames most
relevant to the current text and appends the new one. Attention then sees
``[sink] ++ [bank] ++ [recent frames]``, the bank's frames at the positions they were recorded
at. ``memory_bank: false`` leaves the bank empty, which is the reference implementation as it
runs (its bank is never filled), i.e. LongLive's mechanics with MemFlow's weights and steps.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from pydantic import Field

from scope.models.artifacts import MEMFLOW_GENERATOR, PIPELINE_ARTIFACTS
from scope.pipelines.registry import register
from scope.pipelines.wan.causal_pipeline import CausalLoadParams, CausalWanPipeline, causal_config, causal_info
from scope.pipelines.wan.causal_stream import CausalStreamSettings

#: MemFlow's model.yaml: frames per layer in the bank, and every how many chunks one is recorded.
BANK_SIZE, RECORD_INTERVAL = 3, 3


def frame_relevance(text_keys: torch.Tensor, frames: torch.Tensor, frame_seq_len: int) -> torch.Tensor:
    """MemFlow's score of each stored frame for the current text, shape ``[frames]``.

    The mean, over text tokens, heads and the frame's tokens, of the raw attention logits
    ``q_text . k / sqrt(head_dim)`` with the layer's cached cross-attention keys as the text
    queries. The mean of dot products is the dot product of the means, so it is computed as that.
    """
    head_dim = frames.shape[-1]
    query = text_keys.float().mean(dim=1)  # [B, H, D]
    keys = frames.float().unflatten(1, (-1, frame_seq_len)).mean(dim=2)  # [B, F, H, D]
    return torch.einsum("bhd,bfhd->bf", query, keys)[0] / query.shape[1] / head_dim**0.5


class MemoryBank:
    """One stream's bank: up to ``size`` frames of clean keys and values per layer.

    A frame is staged by the clean pass of every ``record_interval``-th chunk (the first frame
    the pass writes) and committed just before the layer next attends, i.e. at the next chunk's
    first forward; a full bank first keeps its ``size - 1`` frames most relevant to the current
    text (:func:`frame_relevance`, in their recorded order) and then appends the new one.
    """

    def __init__(self, num_layers: int, frame_seq_len: int, size: int = BANK_SIZE, record_interval: int = RECORD_INTERVAL):
        if size < 1 or record_interval < 1:
            raise ValueError("the bank needs size >= 1 and record_interval >= 1")
        self.frame_seq_len = frame_seq_len
        self.size = size
        self.record_interval = record_interval
        self.num_layers = num_layers
        self.reset()

    def reset(self) -> None:
        layers = self.num_layers
        self.banks: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        self.staged: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * layers
        self._recording = [False] * layers

    def frame_count(self, index: int = 0) -> int:
        bank = self.banks[index]
        return 0 if bank is None else bank[0].shape[1] // self.frame_seq_len

    # The stream's side -----------------------------------------------------------------------

    def before_clean_pass(self, chunk_index: int) -> None:
        self._recording = [chunk_index % self.record_interval == 0] * self.num_layers

    # The cache's side ------------------------------------------------------------------------

    def written(self, index: int, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._recording[index] and k.shape[1] >= self.frame_seq_len:
            fsl = self.frame_seq_len
            self.staged[index] = (k[:, :fsl].clone(), v[:, :fsl].clone())
        self._recording[index] = False

    def before_attention(self, index: int, text_keys: Callable[[], torch.Tensor]) -> None:
        staged = self.staged[index]
        if staged is None:
            return
        self.staged[index] = None
        bank = self.banks[index]
        if bank is None:
            self.banks[index] = staged
            return
        if self.frame_count(index) >= self.size:
            bank = self._keep_relevant(bank, text_keys(), self.size - 1)
        self.banks[index] = (torch.cat([bank[0], staged[0]], dim=1), torch.cat([bank[1], staged[1]], dim=1))

    def frames(self, index: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        return self.banks[index]

    def _keep_relevant(
        self, bank: tuple[torch.Tensor, torch.Tensor], text_keys: torch.Tensor, keep: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        scores = frame_relevance(text_keys, bank[0], self.frame_seq_len)
        chosen = torch.topk(scores, keep).indices.sort().values
        return tuple(part.unflatten(1, (-1, self.frame_seq_len))[:, chosen].flatten(1, 2) for part in bank)


#: MemFlow's model.yaml and mechanics.
SETTINGS = CausalStreamSettings(
    frames_per_block=3,
    local_attn_size=12,
    sink_size=3,
    timestep_shift=5.0,
    recache_on_prompt_change=True,
    denoising_commits=False,
    memory=MemoryBank,
)


class MemFlowLoadParams(CausalLoadParams):
    """Load parameters of ``memflow``: the causal Wan ones and the memory bank switch."""

    memory_bank: bool = Field(
        True,
        description="MemFlow's memory bank. false: the bank stays empty, as in the reference "
        "implementation, which never fills it.",
    )


MemFlowConfig = causal_config("MemFlowConfig", "memflow")


@register
class MemFlowPipeline(CausalWanPipeline):
    info = causal_info(
        id="memflow",
        name="MemFlow",
        description="Long text-to-video on Wan2.1-1.3B from Kling: LongLive's training and "
        "inference with a memory bank of past frames chosen by relevance to the prompt.",
        docs_url="https://github.com/daydreamlive/scope/blob/main/src/scope/core/pipelines/memflow/docs/usage.md",
    )
    load_params_model = MemFlowLoadParams
    config_model = MemFlowConfig
    artifacts = PIPELINE_ARTIFACTS["memflow"]
    settings = SETTINGS
    generator_file = (MEMFLOW_GENERATOR, "base.pt")
    lora_file = (MEMFLOW_GENERATOR, "lora.pt")

    def stream_settings(self) -> CausalStreamSettings:
        if self.load_params.memory_bank:
            return self.settings
        return dataclasses.replace(self.settings, memory=None)
