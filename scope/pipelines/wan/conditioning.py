"""Per-stream prompt conditioning: which prompts, spatial blending, temporal transitions.

The tensor functions are the reference's blending math. :class:`PromptConditioner` is its
two-stage state machine (the text block that picks and encodes prompts, then the blending
block that snaps or queues a transition), held per stream so streams never share state.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

logger = logging.getLogger(__name__)

EPSILON = 1e-8
#: Slerp falls back to lerp when every token's angle is below this (radians).
SLERP_PARALLEL_THRESHOLD = 1e-4
#: A transition whose endpoints are closer than this (Frobenius norm) is skipped.
MIN_TRANSITION_DIFF = 0.01

Prompt = dict[str, Any]
EncodeFn = Callable[[list[str]], torch.Tensor]


# Blending -----------------------------------------------------------------------------------


def normalize_weights(weights: Sequence[float], *, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Weights summing to 1, computed in the embeddings' dtype as the reference does.

    A non-positive total falls back to equal weights.
    """
    tensor = torch.tensor([float(w) for w in weights], dtype=dtype, device=device)
    total = tensor.sum()
    if total > 0:
        return tensor / total
    logger.warning("all prompt weights are zero or negative; using equal weights")
    return torch.ones_like(tensor) / len(tensor)


def blend_linear(embeddings: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted sum rescaled so its norm (whole tensor) is the weighted mean of the input norms.

    Averaging shrinks the norm of dissimilar embeddings; restoring it avoids washed-out output.
    """
    first = embeddings[0]
    w = normalize_weights(weights, dtype=first.dtype, device=first.device)
    target_norm = sum(embed.norm() * weight for embed, weight in zip(embeddings, w, strict=True))
    combined = torch.zeros_like(first)
    for embed, weight in zip(embeddings, w, strict=True):
        combined += weight * embed
    current_norm = combined.norm()
    if current_norm > EPSILON:
        combined = combined * (target_norm / current_norm)
    return combined


def slerp_tokens(e1: torch.Tensor, e2: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation per token (last dim) of the un-normalised embeddings.

    When every token pair is nearly parallel the angle is meaningless, so it lerps instead
    (in float32 only exactly parallel pairs qualify: ``acos`` of the rounded dot is coarser).
    An exactly parallel pair among others collapses to zero, as in the reference.
    """
    n1 = e1 / (e1.norm(dim=-1, keepdim=True) + EPSILON)
    n2 = e2 / (e2.norm(dim=-1, keepdim=True) + EPSILON)
    omega = torch.acos(torch.clamp((n1 * n2).sum(dim=-1, keepdim=True), -1.0, 1.0))
    if omega.abs().max() < SLERP_PARALLEL_THRESHOLD:
        return (1.0 - t) * e1 + t * e2
    sin_omega = torch.sin(omega)
    c1 = torch.sin((1.0 - t) * omega) / (sin_omega + EPSILON)
    c2 = torch.sin(t * omega) / (sin_omega + EPSILON)
    return c1 * e1 + c2 * e2


def blend(embeddings: Sequence[torch.Tensor], weights: Sequence[float], method: str = "linear") -> torch.Tensor:
    """Spatial blend: slerp with ``t = w2`` for exactly two prompts, otherwise linear."""
    if not embeddings:
        raise ValueError("nothing to blend")
    if len(embeddings) != len(weights):
        raise ValueError(f"{len(embeddings)} embeddings but {len(weights)} weights")
    if method == "slerp" and len(embeddings) == 2:
        w = normalize_weights(weights, dtype=embeddings[0].dtype, device=embeddings[0].device)
        return slerp_tokens(embeddings[0], embeddings[1], w[1].item())
    return blend_linear(embeddings, weights)


def transition_grid(source: torch.Tensor, target: torch.Tensor, num_steps: int, method: str = "linear") -> list[torch.Tensor]:
    """``num_steps`` embeddings at ``t = linspace(0, 1, num_steps)``, the first being the source.

    Empty when the endpoints (nearly) coincide or ``num_steps <= 0``. With one step the grid
    is the source alone, as ``linspace`` gives for the reference.
    """
    if num_steps <= 0 or (target - source).norm() < MIN_TRANSITION_DIFF:
        return []
    grid = []
    for t in torch.linspace(0, 1, steps=num_steps).tolist():
        if method == "slerp":
            grid.append(slerp_tokens(source, target, t))
        else:
            grid.append(torch.lerp(source, target, t))
    return grid


# Inputs -------------------------------------------------------------------------------------


def normalize_prompts(prompts: Any) -> list[Prompt]:
    """A string, strings, dicts or ``PromptItem``-like objects as ``[{text, weight}]``."""
    if prompts is None:
        return []
    if isinstance(prompts, str):
        return [{"text": prompts, "weight": 1.0}]
    if isinstance(prompts, Mapping) or hasattr(prompts, "text"):
        prompts = [prompts]
    items = []
    for item in prompts:
        if isinstance(item, str):
            items.append({"text": item, "weight": 1.0})
        elif isinstance(item, Mapping):
            items.append({"text": str(item.get("text", "")), "weight": float(item.get("weight", 1.0))})
        elif hasattr(item, "text"):
            items.append({"text": str(item.text), "weight": float(getattr(item, "weight", 1.0))})
        else:
            raise ValueError(f"a prompt must be a string, a {{text, weight}} object or a list of them, not {type(item).__name__}")
    return items


def _transition_fields(transition: Any) -> tuple[Any, int, str]:
    """``(target_prompts, num_steps, method)`` from a dict or a ``Transition`` model."""
    if transition is None:
        return None, 0, "linear"
    get = transition.get if isinstance(transition, Mapping) else lambda name, default=None: getattr(transition, name, default)
    try:
        num_steps = int(get("num_steps", 0))
    except (TypeError, ValueError):
        num_steps = 0
    return get("target_prompts"), num_steps, get("temporal_interpolation_method", "linear") or "linear"


def _as_embedding(tensor: Any) -> torch.Tensor:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"prompt_embeds must hold tensors, not {type(tensor).__name__}")
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() != 3 or tensor.shape[0] != 1:
        raise ValueError(f"a prompt embedding must be [1, L, dim] or [L, dim], got {list(tensor.shape)}")
    return tensor


def normalize_embeds(prompt_embeds: Any) -> tuple[list[torch.Tensor], list[float]]:
    """A tensor, a list of tensors, or a list of ``(tensor, weight)`` as embeddings and weights."""
    if isinstance(prompt_embeds, torch.Tensor):
        if prompt_embeds.dim() == 3 and prompt_embeds.shape[0] > 1:
            return [row.unsqueeze(0) for row in prompt_embeds], [1.0] * prompt_embeds.shape[0]
        return [_as_embedding(prompt_embeds)], [1.0]
    embeds, weights = [], []
    for item in prompt_embeds:
        if isinstance(item, (tuple, list)):
            tensor, weight = item
        else:
            tensor, weight = item, 1.0
        embeds.append(_as_embedding(tensor))
        weights.append(float(weight))
    if not embeds:
        raise ValueError("prompt_embeds is empty")
    return embeds, weights


def _prompts_key(prompts: list[Prompt]) -> tuple:
    return ("prompts", tuple((p["text"], p["weight"]) for p in prompts))


class _EmbedsKey:
    """Identity of a ``prompt_embeds`` value: a private copy, compared by content."""

    def __init__(self, embeds: list[torch.Tensor], weights: list[float]):
        self.embeds = [e.detach().clone() for e in embeds]
        self.weights = tuple(weights)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, _EmbedsKey) or self.weights != other.weights or len(self.embeds) != len(other.embeds):
            return False
        return all(
            a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
            for a, b in zip(self.embeds, other.embeds, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]


# The state machine --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConditioningUpdate:
    """What one call decided; ``embedding`` is ``None`` when the conditioning did not change."""

    embedding: torch.Tensor | None
    changed: bool
    transition_active: bool
    current_prompts: list[Prompt] | None


class PromptConditioner:
    """One stream's prompt state, following the reference's text and blending blocks.

    Rules, in the order :meth:`update` applies them:

    * ``init_cache`` forgets everything: last seen and encoded prompts, current prompts,
      the current embedding and any queued transition.
    * Prompts: a transition's ``target_prompts`` win; else incoming prompts that differ from
      the last *incoming* value; else the current ones (a stale re-send cannot bounce back).
    * Encoding happens only when the chosen prompts differ from the last *encoded* ones.
    * New embeddings cancel any running transition, then snap (no source, or
      ``num_steps <= 0``) or queue a ``linspace`` grid whose first entry is used at once.
    * Without new embeddings one queued entry is consumed per call, each marking a change.
    * When no transition is running the chosen prompts become the current ones.
    * ``prompt_embeds`` replaces the text prompts with given embeddings; a different value
      (by content) counts as new embeddings, and the current prompts become unknown.
    """

    def __init__(self, encode_fn: EncodeFn):
        self.encode_fn = encode_fn
        self.reset()

    def reset(self) -> None:
        """Forget all state, as ``init_cache`` does."""
        self._last_incoming: tuple | None = None
        self._last_encoded: Any = None
        self._current_prompts: list[Prompt] | None = None
        self._embedding: torch.Tensor | None = None
        self._queue: list[torch.Tensor] = []

    @property
    def embedding(self) -> torch.Tensor | None:
        """The conditioning in use, ``[1, 512, dim]``; ``None`` before the first prompt."""
        return self._embedding

    @property
    def transition_active(self) -> bool:
        return bool(self._queue)

    @property
    def current_prompts(self) -> list[Prompt] | None:
        return None if self._current_prompts is None else [dict(p) for p in self._current_prompts]

    def update(
        self,
        prompts: Any,
        transition: Any = None,
        *,
        spatial_method: str = "linear",
        init_cache: bool = False,
        prompt_embeds: Any = None,
    ) -> ConditioningUpdate:
        """Advance one call (one chunk); see the class docstring for the rules."""
        if init_cache:
            self.reset()
        target_prompts, num_steps, temporal_method = _transition_fields(transition)

        if prompt_embeds is not None:
            chosen, new = self._choose_embeds(prompt_embeds)
        else:
            chosen, new = self._choose_prompts(prompts, target_prompts)

        changed = False
        if new is not None and self._queue:
            self._queue = []
        if new is not None and new[0]:
            target = blend(new[0], new[1], spatial_method)
            if num_steps > 0 and self._embedding is not None:
                self._queue = transition_grid(self._embedding, target, num_steps, temporal_method)
                changed = self._consume()
            else:
                self._embedding = target
                changed = True
        elif new is None and self._queue:
            changed = self._consume()

        if not self._queue:
            self._current_prompts = chosen
        return ConditioningUpdate(
            embedding=self._embedding if changed else None,
            changed=changed,
            transition_active=bool(self._queue),
            current_prompts=self.current_prompts,
        )

    def _consume(self) -> bool:
        """Take the next transition entry; an empty queue (a skipped transition) changes nothing."""
        if not self._queue:
            return False
        self._embedding = self._queue.pop(0)
        return True

    def _choose_prompts(self, prompts: Any, target_prompts: Any):
        """Pick the prompts to use and encode them if they differ from the last encoded ones."""
        incoming = normalize_prompts(prompts)
        incoming_changed = _prompts_key(incoming) != self._last_incoming
        self._last_incoming = _prompts_key(incoming)
        if target_prompts is not None:
            chosen = normalize_prompts(target_prompts)
        elif self._current_prompts is not None and not incoming_changed:
            chosen = self._current_prompts
        else:
            chosen = incoming
        key = _prompts_key(chosen)
        if key == self._last_encoded:
            return chosen, None
        self._last_encoded = key
        if not chosen:
            return chosen, ([], [])
        encoded = self.encode_fn([p["text"] for p in chosen])
        embeds = [encoded[i : i + 1] for i in range(len(chosen))]
        return chosen, (embeds, [p["weight"] for p in chosen])

    def _choose_embeds(self, prompt_embeds: Any):
        """Given embeddings stand in for encoded prompts; there are no current prompts then."""
        embeds, weights = normalize_embeds(prompt_embeds)
        key = _EmbedsKey(embeds, weights)
        if key == self._last_encoded:
            return None, None
        self._last_encoded = key
        return None, (embeds, weights)
