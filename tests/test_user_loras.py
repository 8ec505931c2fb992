"""User LoRAs on the causal Wan pipelines, in the kernel: the math, the formats, streams apart.

``permanent_merge`` and ``runtime_peft`` give the same generator output; scale 0 is no LoRA;
every key convention of one delta gives the same effective weights, ``alpha / rank`` applied
alike; each stream's scales are its own; a file that does not fit fails naming it and its key.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import scope
from scope.params import ParameterErrors
from scope.pipelines.wan.config import SYNTHETIC_WAN_CONFIG as CONFIG
from scope.pipelines.wan.lora import LoraFileError, read_lora

SIZE = 64
RANK = 4
#: The linears the test LoRAs touch in every block (their kinds: attention, cross-attention, FFN).
TARGETS = ("self_attn.q", "self_attn.o", "cross_attn.v", "ffn.0", "ffn.2")


def delta(seed: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{module: (down [r, in], up [out, r])}`` over :data:`TARGETS` in every block."""
    gen = torch.Generator().manual_seed(seed)
    pairs = {}
    for i in range(CONFIG.num_layers):
        for target in TARGETS:
            out_features = CONFIG.ffn_dim if target == "ffn.0" else CONFIG.dim
            in_features = CONFIG.ffn_dim if target == "ffn.2" else CONFIG.dim
            pairs[f"blocks.{i}.{target}"] = (
                0.05 * torch.randn(RANK, in_features, generator=gen),
                0.05 * torch.randn(out_features, RANK, generator=gen),
            )
    return pairs


DIFFUSERS = {"self_attn.q": "attn1.to_q", "self_attn.o": "attn1.to_out.0", "cross_attn.v": "attn2.to_v", "ffn.0": "ffn.net.0.proj", "ffn.2": "ffn.net.2"}


def write(path: Path, pairs, fmt: str = "peft-prefixed", alpha: float | None = None) -> Path:
    """One delta in one key convention (``alpha`` stored where given)."""
    state = {}
    for module, (down, up) in pairs.items():
        block, target = module.split(".", 2)[1], module.split(".", 2)[2]
        if fmt == "peft-prefixed":
            base, parts = f"diffusion_model.{module}", ("lora_A.weight", "lora_B.weight")
        elif fmt == "peft":
            base, parts = module, ("lora_A.weight", "lora_B.weight")
        elif fmt == "dotted":
            base, parts = module, ("lora_down.weight", "lora_up.weight")
        elif fmt == "kohya":
            base, parts = "lora_unet_" + module.replace(".", "_"), ("lora_down.weight", "lora_up.weight")
        elif fmt == "diffusers":
            base, parts = f"transformer.blocks.{block}.{DIFFUSERS[target]}", ("lora_A.weight", "lora_B.weight")
        state[f"{base}.{parts[0]}"] = down.contiguous()
        state[f"{base}.{parts[1]}"] = up.contiguous()
        if alpha is not None:
            state[f"{base}.alpha"] = torch.tensor(float(alpha))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("loras")
    return {"a": write(root / "style_a.safetensors", delta(1)), "b": write(root / "style_b.safetensors", delta(2))}


def load(models_dir, **params):
    return scope.load_pipeline("longlive", models_dir=models_dir, height=SIZE, width=SIZE, seed=3, **params)


@pytest.fixture(scope="module")
def base(synthetic_models):
    return load(synthetic_models)


@pytest.fixture(scope="module")
def runtime(synthetic_models, lora_files):
    loras = [{"path": str(lora_files[k]), "scale": 0.5, "merge_mode": "runtime_peft"} for k in ("a", "b")]
    return load(synthetic_models, loras=loras)


def embeds(seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(1, CONFIG.text_len, CONFIG.text_dim, generator=torch.Generator().manual_seed(seed))


def generator_output(pipeline, scales: dict[Path, float] | None = None) -> torch.Tensor:
    """One uncached generator forward on fixed inputs, under ``scales`` for runtime adapters."""
    gen = torch.Generator().manual_seed(9)
    latents = torch.randn(1, 3, 16, SIZE // 8, SIZE // 8, generator=gen)
    runtime = pipeline.components.runtime_loras
    if runtime is not None:
        runtime.scales = dict(scales or {})
    with torch.no_grad():
        return pipeline.components.generator(latents, torch.full((1, 3), 750), embeds())


def test_permanent_merge_equals_runtime_at_the_same_scale(synthetic_models, lora_files, runtime, base):
    path_a, path_b = lora_files["a"].resolve(), lora_files["b"].resolve()
    merged = load(synthetic_models, loras=[{"path": str(path_a), "scale": 0.5}, {"path": str(path_b), "scale": -1.5}])
    expected = generator_output(merged)
    got = generator_output(runtime, {path_a: 0.5, path_b: -1.5})
    assert (got - expected).abs().max().item() <= 1e-5
    assert (expected - generator_output(base)).abs().max().item() > 1e-2  # the LoRAs do something
    # LongLive's built-in LoRA stays in; the user's goes on top: W' = W + s * B_u A_u + B A.
    linear = dict(merged.components.generator.named_modules())["blocks.0.ffn.0"]
    plain = dict(base.components.generator.named_modules())["blocks.0.ffn.0"]
    down_a, up_a = delta(1)["blocks.0.ffn.0"]
    down_b, up_b = delta(2)["blocks.0.ffn.0"]
    assert torch.allclose(linear.weight, plain.weight + 0.5 * up_a @ down_a - 1.5 * up_b @ down_b, atol=1e-6)


def test_scale_zero_is_no_lora(runtime, base, lora_files):
    assert torch.equal(generator_output(runtime, {}), generator_output(base))
    zero = {lora_files["a"].resolve(): 0.0, lora_files["b"].resolve(): 0.0}
    assert torch.equal(generator_output(runtime, zero), generator_output(base))
    frames = runtime.open_stream().generate(
        prompt_embeds=embeds(), lora_scales=[{"path": str(p), "scale": 0.0} for p in lora_files.values()]
    ).frames
    assert np.array_equal(frames, base.open_stream().generate(prompt_embeds=embeds()).frames)


def test_each_streams_scales_are_its_own_and_nothing_reloads(runtime, lora_files):
    a = str(lora_files["a"])
    generator = runtime.components.generator
    weight = dict(generator.named_modules())["blocks.0.self_attn.q"].weight.clone()

    def alone(scale: float) -> list[np.ndarray]:
        stream = runtime.open_stream()
        first = stream.generate(prompt_embeds=embeds(), lora_scales=[{"path": a, "scale": scale}])
        return [first.frames] + [stream.generate().frames for _ in range(2)]

    low, high = alone(0.0), alone(2.0)
    one, two = runtime.open_stream(), runtime.open_stream()
    mixed_low = [one.generate(prompt_embeds=embeds(), lora_scales=[{"path": a, "scale": 0.0}]).frames]
    mixed_high = [two.generate(prompt_embeds=embeds(), lora_scales=[{"path": a, "scale": 2.0}]).frames]
    for _ in range(2):
        mixed_low.append(one.generate().frames)
        mixed_high.append(two.generate().frames)
    assert all(np.array_equal(x, y) for x, y in zip(low, mixed_low))
    assert all(np.array_equal(x, y) for x, y in zip(high, mixed_high))
    assert np.abs(low[-1].astype(int) - high[-1].astype(int)).mean() > 1.0
    assert runtime.components.generator is generator  # the same weights, untouched
    assert torch.equal(dict(generator.named_modules())["blocks.0.self_attn.q"].weight, weight)


def test_a_scale_change_restarts_the_stream_under_manage_cache(runtime, lora_files):
    stream = runtime.open_stream()
    stream.generate(prompt_embeds=embeds())
    stream.generate()
    changed = stream.generate(lora_scales=[{"path": str(lora_files["a"]), "scale": 1.0}])
    assert changed.info["init_cache"] is True and changed.info["current_start_frame"] == 0
    assert changed.frames.shape[0] == 9
    same = stream.generate(lora_scales=[{"path": str(lora_files["a"]), "scale": 1.0}])
    assert same.info["init_cache"] is False  # nothing changed
    kept = runtime.open_stream()
    kept.generate(prompt_embeds=embeds(), manage_cache=False)
    chunk = kept.generate(lora_scales=[{"path": str(lora_files["a"]), "scale": 1.0}])
    assert chunk.info["init_cache"] is False and chunk.info["current_start_frame"] == 3


def test_lora_scales_for_a_merged_or_unknown_adapter_are_refused_by_name(synthetic_models, lora_files, tmp_path):
    merged = load(synthetic_models, loras=[{"path": str(lora_files["a"]), "scale": 1.0}])
    with pytest.raises(ParameterErrors) as caught:
        merged.open_stream().generate(prompt_embeds=embeds(), lora_scales=[{"path": str(lora_files["a"]), "scale": 2.0}])
    assert caught.value.errors[0]["loc"] == ["lora_scales", 0, "path"]
    assert "merged into the weights" in caught.value.errors[0]["msg"]
    with pytest.raises(ParameterErrors, match="not a LoRA this pipeline loaded"):
        merged.open_stream().generate(prompt_embeds=embeds(), lora_scales=[{"path": str(tmp_path / "x.safetensors"), "scale": 1.0}])
    assert merged.loaded_lora_adapters == [
        {"path": str(lora_files["a"].resolve()), "scale": 1.0, "merge_mode": "permanent_merge", "name": "style_a"}
    ]


@pytest.mark.parametrize("fmt", ["peft-prefixed", "peft", "dotted", "kohya", "diffusers"])
def test_every_key_convention_gives_the_same_deltas_with_alpha_applied_alike(base, tmp_path, fmt):
    pairs = delta(4)
    plain = read_lora(write(tmp_path / "plain.safetensors", pairs, fmt), base.components.generator)
    scaled = read_lora(write(tmp_path / "alpha.safetensors", pairs, fmt, alpha=2 * RANK), base.components.generator)
    assert set(plain.deltas) == set(pairs)
    for module, (down, up) in pairs.items():
        assert torch.allclose(plain.deltas[module].up @ plain.deltas[module].down, up @ down)
        assert torch.allclose(scaled.deltas[module].up @ scaled.deltas[module].down, 2 * up @ down)
    assert plain.rank == RANK and plain.name == "plain"


@pytest.mark.parametrize(
    "state,message",
    [
        ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(RANK, CONFIG.dim)}, "up (lora_B) weight of blocks.0.self_attn.q is missing"),
        ({"diffusion_model.blocks.9.self_attn.q.lora_A.weight": torch.zeros(RANK, CONFIG.dim),
          "diffusion_model.blocks.9.self_attn.q.lora_B.weight": torch.zeros(CONFIG.dim, RANK)}, "names no linear module"),
        ({"diffusion_model.blocks.0.self_attn.q.lora_A.weight": torch.zeros(RANK, CONFIG.dim + 1),
          "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.zeros(CONFIG.dim, RANK)}, "do not fit"),
        ({"blocks.0.self_attn.q.weight": torch.zeros(CONFIG.dim, CONFIG.dim)}, "is not a LoRA key"),
    ],
    ids=["half-pair", "unknown-module", "shape", "not-lora"],
)
def test_a_file_that_does_not_fit_fails_naming_it_and_its_key(base, tmp_path, state, message):
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(LoraFileError, match=re.escape(message)) as caught:
        read_lora(path, base.components.generator)
    assert str(path) in str(caught.value) and next(iter(state)).split(".lora_")[0] in str(caught.value)


def test_a_bad_file_fails_the_load_naming_it(synthetic_models, tmp_path):
    bad = tmp_path / "broken.safetensors"
    save_file({"diffusion_model.blocks.0.nope.lora_A.weight": torch.zeros(2, 2)}, str(bad))
    with pytest.raises(LoraFileError, match="broken.safetensors"):
        load(synthetic_models, loras=[{"path": str(bad)}])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load(synthetic_models, loras=[{"path": str(tmp_path / "missing.safetensors")}])


def test_fp8_merges_in_float32_then_quantises_and_runtime_adapters_still_apply(synthetic_models, lora_files, base):
    path = lora_files["a"].resolve()
    merged = load(synthetic_models, quantization="fp8_e4m3fn", loras=[{"path": str(path), "scale": 1.0}])
    layer = dict(merged.components.generator.named_modules())["blocks.0.ffn.0"]
    down, up = delta(1)["blocks.0.ffn.0"]
    exact = dict(base.components.generator.named_modules())["blocks.0.ffn.0"].weight + up @ down
    error = (layer.dequantized(torch.float32) - exact).abs().max() / exact.abs().max()
    assert error < 0.07  # one fp8 rounding of the merged weight (3 mantissa bits)
    runtime = load(synthetic_models, quantization="fp8_e4m3fn", loras=[{"path": str(path), "merge_mode": "runtime_peft"}])
    on, off = generator_output(runtime, {path: 1.0}), generator_output(runtime, {path: 0.0})
    assert (on - off).abs().max().item() > 1e-2
