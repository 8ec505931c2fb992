"""Stream parameters in the API's wire form, built from what is convenient to type."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scope.server_ext.api_models import Asset

PromptsLike = str | list[str | Mapping[str, Any]]


def normalise_prompts(prompts: PromptsLike) -> list[dict[str, Any]]:
    """``"a fox"``, ``["a fox", "snow"]`` or ``[{"text", "weight"}]`` -> ``[{"text", "weight"}]``."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a string or a list, not {type(prompts).__name__}")
    items = []
    for item in prompts:
        if isinstance(item, str):
            items.append({"text": item, "weight": 1.0})
        elif isinstance(item, Mapping) and "text" in item:
            items.append({**item, "weight": float(item.get("weight", 1.0))})
        else:
            raise TypeError(f"a prompt must be a string or a {{'text', 'weight'}} mapping, not {item!r}")
    return items


def asset_paths(value: Any) -> Any:
    """``value`` with each ``Asset`` (what ``upload_asset`` answers) replaced by its path on the server."""
    if isinstance(value, Asset):
        return value.path
    if isinstance(value, (list, tuple)):
        return [asset_paths(item) for item in value]
    return value


def wire_parameters(parameters: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``parameters`` whose prompts (and transition target prompts) are in list form
    and whose assets (``vace_ref_images=[asset]``) are their paths."""
    wire = {name: asset_paths(value) for name, value in parameters.items()}
    if wire.get("prompts") is not None:
        wire["prompts"] = normalise_prompts(wire["prompts"])
    transition = wire.get("transition")
    if isinstance(transition, Mapping) and transition.get("target_prompts") is not None:
        wire["transition"] = {**transition, "target_prompts": normalise_prompts(transition["target_prompts"])}
    return wire


def merge_parameters(
    prompts: PromptsLike | None, parameters: Mapping[str, Any] | None, more: Mapping[str, Any]
) -> dict[str, Any]:
    """``parameters``, then the keyword parameters, then ``prompts`` (each wins over the one before)."""
    merged = {**(parameters or {}), **more}
    if prompts is not None:
        merged["prompts"] = prompts
    return wire_parameters(merged)
