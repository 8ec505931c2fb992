"""Generator checkpoints: real key layout, strict loading errors, the built-in LoRA merge, fp8,
tensor-only unpickling, and the synthetic writers."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from scope.models.synthetic.generator import (
    generator_shapes,
    generator_state_dict,
    peft_lora_state_dict,
    write_generator,
    write_peft_lora,
    write_vace_module,
    write_wan_config,
)
from scope.pipelines.wan.config import (
    SYNTHETIC_WAN_CONFIG,
    WAN_1_3B_CONFIG,
    WAN_14B_CONFIG,
    WanConfig,
)
from scope.pipelines.wan.loading import (
    CheckpointError,
    CheckpointMismatch,
    Fp8Linear,
    check_shapes,
    load_generator,
    load_strict,
    read_state_dict,
    unpack_generator,
)
from scope.pipelines.wan.transformer import CausalWanTransformer

CONFIG = SYNTHETIC_WAN_CONFIG


def expected_wan_shapes(d: int, f: int, layers: int) -> dict[str, tuple[int, ...]]:
    """Wan2.1 T2V generator keys (dim ``d``, ffn ``f``), written out from the original module tree.

    Text embeddings of 4096, frequencies of 256, 16 channels in and out, patches of (1, 2, 2):
    the same for the 1.3B and the 14B."""
    table = {
        "patch_embedding.weight": (d, 16, 1, 2, 2),
        "patch_embedding.bias": (d,),
        "text_embedding.0.weight": (d, 4096),
        "text_embedding.0.bias": (d,),
        "text_embedding.2.weight": (d, d),
        "text_embedding.2.bias": (d,),
        "time_embedding.0.weight": (d, 256),
        "time_embedding.0.bias": (d,),
        "time_embedding.2.weight": (d, d),
        "time_embedding.2.bias": (d,),
        "time_projection.1.weight": (6 * d, d),
        "time_projection.1.bias": (6 * d,),
        "head.head.weight": (64, d),
        "head.head.bias": (64,),
        "head.modulation": (1, 2, d),
    }
    for i in range(layers):
        for attn in ("self_attn", "cross_attn"):
            for name in ("q", "k", "v", "o"):
                table[f"blocks.{i}.{attn}.{name}.weight"] = (d, d)
                table[f"blocks.{i}.{attn}.{name}.bias"] = (d,)
            table[f"blocks.{i}.{attn}.norm_q.weight"] = (d,)
            table[f"blocks.{i}.{attn}.norm_k.weight"] = (d,)
        table[f"blocks.{i}.norm3.weight"] = (d,)
        table[f"blocks.{i}.norm3.bias"] = (d,)
        table[f"blocks.{i}.ffn.0.weight"] = (f, d)
        table[f"blocks.{i}.ffn.0.bias"] = (f,)
        table[f"blocks.{i}.ffn.2.weight"] = (d, f)
        table[f"blocks.{i}.ffn.2.bias"] = (d,)
        table[f"blocks.{i}.modulation"] = (1, 6, d)
    return table


@pytest.fixture
def files(tmp_path):
    config = write_wan_config(tmp_path / "Wan2.1-T2V-1.3B" / "config.json", CONFIG)
    generator = write_generator(tmp_path / "LongLive" / "models" / "longlive_base.pt", CONFIG, seed=3)
    lora = write_peft_lora(tmp_path / "LongLive" / "models" / "lora.pt", CONFIG, seed=4, rank=4)
    return config, generator, lora


def save_generator(path, state, prefix="model.", container="generator"):
    body = {prefix + key: value for key, value in state.items()}
    torch.save({container: body} if container else body, path)
    return path


def sample_inputs(seed=0, frames=2):
    gen = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, frames, 16, 8, 8, generator=gen)
    context = torch.zeros(1, CONFIG.text_len, CONFIG.text_dim)
    context[:, :7] = 0.2 * torch.randn(1, 7, CONFIG.text_dim, generator=gen)
    return latents, torch.full((1, frames), 600), context


def test_real_1_3b_layout_matches_writer_and_model():
    expected = expected_wan_shapes(1536, 8960, 30)
    written = {k: tuple(v.shape) for k, v in generator_state_dict(WAN_1_3B_CONFIG, seed=0, device="meta").items()}
    assert written == expected
    with torch.device("meta"):
        model = CausalWanTransformer(WAN_1_3B_CONFIG)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    params = sum(math.prod(shape) for shape in expected.values())
    assert abs(params / 1e9 - 1.418) < 0.001


def test_real_14b_layout_of_the_krea_file_on_meta():
    """``krea-realtime-video-14b.safetensors`` holds the Wan2.1-T2V-14B tree (keys without their
    ``model.`` prefix here): the writer, the meta-built model and, after fusion, its q/k/v."""
    expected = expected_wan_shapes(5120, 13824, 40)
    block = sorted(key.split(".", 2)[2] for key in expected if key.startswith("blocks.7."))
    norms = {f"{attn}.norm_{x}.weight" for attn in ("self_attn", "cross_attn") for x in "qk"}
    assert len(block) == 27 and norms | {"norm3.weight", "norm3.bias", "modulation"} <= set(block)
    assert len(expected) == 15 + 40 * 27
    assert generator_shapes(WAN_14B_CONFIG) == expected
    # Per block 8d^2 + 2fd + 21d + f = 351,394,304 (d 5120, f 13824), times 40 layers, plus
    # 232,719,424 outside the blocks (embeddings, time projection, head).
    params = sum(math.prod(shape) for shape in expected.values())
    assert params == 40 * 351_394_304 + 232_719_424 == 14_288_491_584
    # The published bf16 file of the 14B is listed at 28.6 GB: 2 bytes a parameter.
    assert abs(2 * params - 28.6e9) / 28.6e9 < 0.005
    with torch.device("meta"):
        model = CausalWanTransformer(WAN_14B_CONFIG)
    check_shapes(model, expected, "krea-realtime-video-14b.safetensors")
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    model.fuse_projections()
    for attn in (b.self_attn for b in model.blocks):
        assert (tuple(attn.qkv.weight.shape), tuple(attn.qkv.bias.shape)) == ((15360, 5120), (15360,))
    fused = model.state_dict()
    assert not [k for k in fused if k.split(".")[2:4] == ["self_attn", "q"]]
    assert len(fused) == len(expected) - 40 * 4


def test_config_json_round_trip_and_validation(tmp_path):
    path = write_wan_config(tmp_path / "config.json", CONFIG)
    data = json.loads(path.read_text())
    assert data["_class_name"] == "WanModel" and data["model_type"] == "t2v"
    assert set(data) == {
        "_class_name", "_diffusers_version", "dim", "eps", "ffn_dim", "freq_dim", "in_dim",
        "model_type", "num_heads", "num_layers", "out_dim", "text_len",
    }
    assert WanConfig.from_json(path) == CONFIG
    real = {"_class_name": "WanModel", "_diffusers_version": "0.30.0", "dim": 1536, "eps": 1e-06,
            "ffn_dim": 8960, "freq_dim": 256, "in_dim": 16, "model_type": "t2v", "num_heads": 12,
            "num_layers": 30, "out_dim": 16, "text_len": 512}
    assert WanConfig.from_dict(real) == WAN_1_3B_CONFIG
    path.write_text(json.dumps({"dim": 256, "num_heads": 2, "num_layers": 2}))
    with pytest.raises(ValueError, match=r"config\.json.*ffn_dim"):
        WanConfig.from_json(path)
    with pytest.raises(ValueError, match="i2v"):
        WanConfig.from_dict({**real, "model_type": "i2v"})


def test_load_generator_reads_the_longlive_container(files):
    config, generator, _ = files
    model = load_generator(config, generator)
    state = generator_state_dict(CONFIG, seed=3)
    loaded = model.state_dict()
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    assert not any(p.requires_grad for p in model.parameters()) and not model.training
    latents, t, context = sample_inputs()
    with torch.no_grad():
        assert torch.isfinite(model(latents, t, context)).all()


@pytest.mark.parametrize("prefix,container", [("", "generator"), ("model.", None), ("", None)])
def test_flat_and_unprefixed_containers_load(tmp_path, prefix, container):
    state = generator_state_dict(CONFIG, seed=3)
    path = save_generator(tmp_path / "gen.pt", state, prefix=prefix, container=container)
    model = load_generator(write_wan_config(tmp_path / "config.json", CONFIG), path)
    assert torch.equal(model.head.modulation, state["head.modulation"])


def test_safetensors_generator_loads(tmp_path):
    state = generator_state_dict(CONFIG, seed=3)
    path = tmp_path / "flat.safetensors"
    save_file({f"model.{k}": v for k, v in state.items()}, str(path))
    model = load_generator(write_wan_config(tmp_path / "config.json", CONFIG), path, dtype=torch.bfloat16)
    assert model.blocks[0].ffn[0].weight.dtype == torch.bfloat16
    assert torch.equal(model.blocks[1].modulation, state["blocks.1.modulation"].bfloat16())


def _mismatch(tmp_path, state, **kwargs) -> str:
    path = save_generator(tmp_path / "broken.pt", state, **kwargs)
    with pytest.raises(CheckpointMismatch) as info:
        load_generator(write_wan_config(tmp_path / "config.json", CONFIG), path)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_key_fails_naming_file_and_key(tmp_path):
    state = generator_state_dict(CONFIG, seed=3)
    del state["blocks.1.cross_attn.norm_k.weight"]
    assert "blocks.1.cross_attn.norm_k.weight" in _mismatch(tmp_path, state)


def test_unexpected_key_fails_naming_file_and_key(tmp_path):
    state = generator_state_dict(CONFIG, seed=3)
    state["blocks.0.self_attn.to_qkv.weight"] = torch.zeros(3 * CONFIG.dim, CONFIG.dim)
    message = _mismatch(tmp_path, state)
    assert "unexpected" in message and "blocks.0.self_attn.to_qkv.weight" in message


def test_wrong_shape_fails_naming_key_and_shapes(tmp_path):
    state = generator_state_dict(CONFIG, seed=3)
    state["blocks.1.ffn.0.weight"] = torch.zeros(CONFIG.ffn_dim + 1, CONFIG.dim)
    message = _mismatch(tmp_path, state)
    assert "blocks.1.ffn.0.weight" in message and str([CONFIG.ffn_dim + 1, CONFIG.dim]) in message


def test_partial_model_prefix_is_not_stripped(tmp_path):
    state = {f"model.{k}": v for k, v in generator_state_dict(CONFIG, seed=3).items()}
    state["head.head.bias"] = state.pop("model.head.head.bias")
    message = _mismatch(tmp_path, state, prefix="")
    assert "unexpected key(s): model.blocks.0." in message and "missing key(s): blocks.0." in message


def test_load_strict_allow_lists():
    with torch.device("meta"):
        model = CausalWanTransformer(CONFIG)
    state = generator_state_dict(CONFIG, seed=1)
    state.pop("head.modulation")
    state["vace_blocks.0.after_proj.weight"] = torch.zeros(2)
    load_strict(model, state, "gen.pt", allow_missing=["head.modulation"], allow_unexpected=["vace_blocks.*"])
    assert torch.equal(model.blocks[0].modulation, state["blocks.0.modulation"])
    assert model.head.modulation.is_meta
    with pytest.raises(CheckpointMismatch, match=r"gen\.pt.*head\.modulation"):
        load_strict(model, state, "gen.pt", allow_unexpected=["vace_blocks.*"])


class Opaque:
    """Any class instance needs code to unpickle; weights-only loading must refuse it."""


def test_pickled_code_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "needs_code.pt"
    torch.save({"generator": generator_state_dict(CONFIG, seed=0), "trainer": Opaque()}, path)
    with pytest.raises(CheckpointError, match=rf"{path.name}.*pickled code.*Opaque"):
        read_state_dict(path)
    with pytest.raises(CheckpointError, match=path.name):
        load_generator(write_wan_config(tmp_path / "config.json", CONFIG), path)


def test_torch_load_is_always_weights_only(files, monkeypatch):
    config, generator, lora = files
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_generator(config, generator, lora_path=lora)
    assert calls == [True, True]


def test_unreadable_files_fail_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        read_state_dict(tmp_path / "nope.pt")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unsupported"):
        read_state_dict(odd)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        read_state_dict(junk)
    with pytest.raises(CheckpointError, match="step.*int"):
        unpack_generator({"generator": {"a": torch.zeros(1), "step": 3}}, "ckpt.pt")


class _UnmergedLoRA(nn.Module):
    """y = W x + b + scaling * B (A x): the adapter as PEFT runs it, unmerged."""

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor, scaling: float):
        super().__init__()
        self.base, self.a, self.b, self.scaling = base, a, b, scaling

    def forward(self, x):
        return self.base(x) + self.scaling * (x @ self.a.t()) @ self.b.t()


def test_lora_merge_equals_unmerged_adapter(files):
    config, generator, lora = files
    merged = load_generator(config, generator, lora_path=lora)
    base = load_generator(config, generator)
    adapter = peft_lora_state_dict(CONFIG, seed=4, rank=4)
    a = adapter["base_model.model.blocks.1.cross_attn.v.lora_A.weight"]
    b = adapter["base_model.model.blocks.1.cross_attn.v.lora_B.weight"]
    expected = base.blocks[1].cross_attn.v.weight + b @ a
    assert torch.allclose(merged.blocks[1].cross_attn.v.weight, expected, atol=1e-7)
    assert not torch.equal(merged.blocks[1].cross_attn.v.weight, base.blocks[1].cross_attn.v.weight)

    modules = dict(base.named_modules())
    for key in adapter:
        if ".lora_A." not in key:
            continue
        name = key.removeprefix("base_model.model.").removesuffix(".lora_A.weight")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name]
        wrapped = _UnmergedLoRA(getattr(parent, child), adapter[key], adapter[key.replace("lora_A", "lora_B")], 1.0)
        setattr(parent, child, wrapped)
    latents, t, context = sample_inputs(seed=1)
    with torch.no_grad():
        assert (merged(latents, t, context) - base(latents, t, context)).abs().max().item() < 1e-5


def test_lora_variants_and_scaling(tmp_path, files):
    config, generator, lora = files
    reference = load_generator(config, generator, lora_path=lora)
    adapter = peft_lora_state_dict(CONFIG, seed=4, rank=4)
    flat_named = tmp_path / "flat_named.pt"
    torch.save({k.replace(".weight", ".default.weight"): v for k, v in adapter.items()}, flat_named)
    other = load_generator(config, generator, lora_path=flat_named)
    assert torch.equal(other.blocks[0].ffn[2].weight, reference.blocks[0].ffn[2].weight)
    half = load_generator(config, generator, lora_path=lora, lora_scaling=0.5)
    base = load_generator(config, generator)
    w = lambda m: m.blocks[0].self_attn.o.weight  # noqa: E731
    assert torch.allclose(w(half) - w(base), 0.5 * (w(reference) - w(base)), atol=1e-7)


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda s: s.__setitem__("base_model.model.blocks.0.norm3.lora_A.weight", torch.zeros(4, 256)), "norm3"),
        (lambda s: s.__setitem__("base_model.model.blocks.9.ffn.0.lora_A.weight", torch.zeros(4, 256)), "blocks.9"),
        (lambda s: s.__setitem__("blocks.0.self_attn.q.lora_A.weight", torch.zeros(4, 256)), "blocks.0.self_attn.q"),
        (lambda s: s.pop("base_model.model.blocks.1.ffn.2.lora_B.weight"), "blocks.1.ffn.2.lora_B"),
        (lambda s: s.__setitem__("base_model.model.blocks.0.cross_attn.k.lora_A.weight", torch.zeros(4, 7)), "cross_attn.k"),
    ],
    ids=["unknown-module", "block-out-of-range", "no-peft-prefix", "missing-B", "wrong-shape"],
)
def test_bad_lora_fails_naming_file_and_key(tmp_path, files, edit, needle):
    config, generator, _ = files
    adapter = peft_lora_state_dict(CONFIG, seed=4, rank=4)
    edit(adapter)
    path = tmp_path / "bad_lora.pt"
    torch.save({"generator_lora": adapter}, path)
    with pytest.raises(CheckpointMismatch) as info:
        load_generator(config, generator, lora_path=path)
    assert str(path) in str(info.value) and needle in str(info.value)


def test_fp8_quantization_keeps_keys_and_outputs(files):
    config, generator, lora = files
    plain = load_generator(config, generator, lora_path=lora)
    fp8 = load_generator(config, generator, lora_path=lora, quantization="fp8_e4m3fn")
    block_linears = [m for m in fp8.blocks.modules() if isinstance(m, Fp8Linear)]
    assert len(block_linears) == 10 * CONFIG.num_layers
    assert all(m.weight.dtype == torch.float8_e4m3fn for m in block_linears)
    assert not any(isinstance(m, nn.Linear) for m in fp8.blocks.modules())
    assert isinstance(fp8.text_embedding[0], nn.Linear) and fp8.text_embedding[0].weight.dtype == torch.float32
    assert fp8.state_dict().keys() == plain.state_dict().keys()

    latents, t, context = sample_inputs(seed=2)
    with torch.no_grad():
        ref = plain(latents, t, context)
        out = fp8(latents, t, context)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        rel = ((out - ref).norm() / ref.norm()).item()
        assert 0 < rel < 0.05
        # The saved weights are the dequantized values, loadable into an unquantized model.
        restored = CausalWanTransformer(CONFIG)
        restored.load_state_dict(fp8.state_dict())
        assert torch.allclose(restored.eval()(latents, t, context), out, atol=1e-5)
        # Loading plain weights into the quantized model quantizes them again.
        fp8.load_state_dict(plain.state_dict())
        assert fp8.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
        assert torch.allclose(fp8(latents, t, context), out, atol=1e-6)


def test_unknown_quantization_is_rejected_before_loading(tmp_path):
    with pytest.raises(ValueError, match="int8"):
        load_generator(tmp_path / "missing.json", tmp_path / "missing.pt", quantization="int8")


def test_synthetic_weights_are_deterministic_and_sane():
    a = generator_state_dict(CONFIG, seed=5)
    b = generator_state_dict(CONFIG, seed=5)
    c = generator_state_dict(CONFIG, seed=6)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.0.self_attn.q.weight"], c["blocks.0.self_attn.q.weight"])
    assert all(torch.isfinite(v).all() for v in a.values())
    assert 0.8 < a["blocks.0.self_attn.q.weight"].std().item() * math.sqrt(CONFIG.dim) < 1.2
    assert a["blocks.0.modulation"].abs().max() < 1.0


def test_vace_module_layout(tmp_path):
    config = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=5)
    path = write_vace_module(tmp_path / "Wan2_1-VACE_module_1_3B_bf16.safetensors", config, seed=1)
    state = load_file(str(path))
    assert all(v.dtype == torch.bfloat16 for v in state.values())
    blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith("vace_blocks.")})
    assert blocks == [0, 1, 2]  # hints after layers 0, 2, 4
    assert {k for k in state if "before_proj" in k} == {"vace_blocks.0.before_proj.weight", "vace_blocks.0.before_proj.bias"}
    for j in blocks:
        assert state[f"vace_blocks.{j}.after_proj.weight"].shape == (256, 256)
        assert state[f"vace_blocks.{j}.cross_attn.norm_k.weight"].shape == (256,)
        assert state[f"vace_blocks.{j}.norm3.bias"].shape == (256,)
        assert state[f"vace_blocks.{j}.modulation"].shape == (1, 6, 256)
        assert state[f"vace_blocks.{j}.after_proj.weight"].abs().sum() > 0
    assert state["vace_patch_embedding.weight"].shape == (256, 96, 1, 2, 2)
    assert state["vace_patch_embedding.weight"].abs().max() > 0
    per_block = {k.split(".", 2)[2] for k in state if k.startswith("vace_blocks.1.")}
    main_block = {k.split(".", 2)[2] for k in generator_state_dict(config, 0, device="meta") if k.startswith("blocks.1.")}
    assert per_block == main_block | {"after_proj.weight", "after_proj.bias"}
