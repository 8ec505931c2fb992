"""The configuration schema every pipeline serves as ``config_schema`` (UI hints and defaults).

Its fields are defined once, here. A pipeline's schema is a :meth:`PipelineConfig.variant`
that changes only defaults, so the bounds and descriptions of a field cannot drift apart
between pipelines, and a new pipeline states just what is its own.
"""

from __future__ import annotations

import sys
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from scope.params import MAX_SEED, AssetPath


class PipelineConfig(BaseModel):
    """Fields of every pipeline's configuration schema."""

    model_config = ConfigDict(extra="forbid")

    height: int = Field(512, ge=1, description="Output height in pixels.")
    width: int = Field(512, ge=1, description="Output width in pixels.")
    manage_cache: bool = Field(
        True, description="Reset caches automatically when conditioning (the step list, video-mode prompts) changes."
    )
    base_seed: int = Field(
        42, ge=0, le=MAX_SEED, description="Random seed (0..2**63-1); each chunk uses base_seed + its start frame, mod 2**64."
    )
    denoising_steps: list[int] | None = Field(None, description="Denoising timesteps, descending; null: no denoising.")
    noise_scale: float | None = Field(None, ge=0.0, le=1.0, description="Video mode: noise mixed into the input latents.")
    noise_controller: bool | None = Field(None, description="Video mode: adjust the noise scale from motion.")
    input_size: int | None = Field(1, ge=1, description="Input frames per block.")
    ref_images: list[AssetPath] | None = Field(None, description="VACE reference images.")
    vace_context_scale: float = Field(1.0, ge=0.0, le=2.0, description="VACE conditioning strength.")

    @classmethod
    def variant(
        cls, name: str, doc: str, *, descriptions: dict[str, str] | None = None, **defaults: Any
    ) -> type[PipelineConfig]:
        """A subclass named ``name`` (its schema title) whose fields take ``defaults``.

        Each field keeps its type and bounds, and its description unless ``descriptions``
        states what the field means for this pipeline; a name that is not a field is a
        ``TypeError``, so a typo cannot add a field silently.
        """
        descriptions = descriptions or {}
        unknown = sorted((set(defaults) | set(descriptions)) - set(cls.model_fields))
        if unknown:
            raise TypeError(f"{cls.__name__} has no field {', '.join(unknown)}")
        fields: dict[str, Any] = {}
        for key in {**defaults, **descriptions}:
            changes = {"default": defaults[key]} if key in defaults else {}
            if key in descriptions:
                changes["description"] = descriptions[key]
            base = cls.model_fields[key]
            fields[key] = (base.annotation, FieldInfo.merge_field_infos(base, **changes))
        module = sys._getframe(1).f_globals.get("__name__", __name__)
        return create_model(name, __base__=cls, __doc__=doc, __module__=module, **fields)
