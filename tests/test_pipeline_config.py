"""Pipelines' configuration schemas: one base model, defaults from each pipeline's own constants."""

from __future__ import annotations

import pytest

from scope.pipelines import longlive, memflow, passthrough, reward_forcing
from scope.pipelines.wan import causal_pipeline
from scope.pipelines.config_schema import PipelineConfig
from scope.pipelines.registry import all_schemas, pipeline_classes

#: The fields of every built-in's ``config_schema``, in the contract's order.
COMMON_FIELDS = [
    "height", "width", "manage_cache", "base_seed", "denoising_steps", "noise_scale",
    "noise_controller", "input_size", "ref_images", "vace_context_scale",
]


def test_every_pipeline_extends_the_base_configuration():
    for cls in pipeline_classes():
        assert issubclass(cls.config_model, PipelineConfig), cls.info.id


@pytest.mark.parametrize(
    ("pipeline_id", "title", "extra"),
    [
        ("passthrough", "PassthroughConfig", []),
        ("longlive", "LongLiveConfig", ["vae_type"]),
        ("reward-forcing", "RewardForcingConfig", ["vae_type"]),
        ("memflow", "MemFlowConfig", ["vae_type"]),
    ],
)
def test_the_served_schema_keeps_its_shape_and_describes_every_field(pipeline_id, title, extra):
    schema = all_schemas()["pipelines"][pipeline_id]["config_schema"]
    assert schema["title"] == title and schema["additionalProperties"] is False
    assert list(schema["properties"]) == COMMON_FIELDS + extra
    for name, prop in schema["properties"].items():
        assert prop.get("description"), name
    assert schema["properties"]["height"]["minimum"] == 1


CAUSAL = [longlive.LongLivePipeline, reward_forcing.RewardForcingPipeline, memflow.MemFlowPipeline]


@pytest.mark.parametrize("pipeline", CAUSAL, ids=lambda cls: cls.info.id)
def test_causal_pipelines_take_their_defaults_from_the_shared_constants(pipeline):
    config, load = pipeline.config_model(), pipeline.load_params_model()
    assert (config.height, config.width, config.base_seed) == (load.height, load.width, load.seed) == (320, 576, 42)
    assert config.denoising_steps == pipeline.default_steps == causal_pipeline.DEFAULT_STEPS == [1000, 750, 500, 250]
    steps = all_schemas()["pipelines"][pipeline.info.id]["config_schema"]["properties"]["denoising_steps"]
    assert steps["type"] == "array" and steps["default"] == [1000, 750, 500, 250], "a Wan step list is never null"


def test_passthrough_takes_its_defaults_from_its_own_constants():
    assert passthrough.PassthroughConfig().height == passthrough.PassthroughLoadParams().height == 512


def test_a_variant_changes_defaults_only():
    variant = PipelineConfig.variant("SmallConfig", "A test schema.", height=64, denoising_steps=[500])
    base, schema = PipelineConfig.model_json_schema(), variant.model_json_schema()
    assert (schema["title"], schema["description"]) == ("SmallConfig", "A test schema.")
    assert schema["properties"]["height"] == {**base["properties"]["height"], "default": 64}
    assert schema["properties"]["denoising_steps"] == {**base["properties"]["denoising_steps"], "default": [500]}
    unchanged = set(base["properties"]) - {"height", "denoising_steps"}
    assert all(schema["properties"][name] == base["properties"][name] for name in unchanged)
    with pytest.raises(TypeError, match="hieght"):
        PipelineConfig.variant("TypoConfig", "A typo.", hieght=64)
