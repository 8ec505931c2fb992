"""The UMT5 text encoder and tokenizer on synthetic files in the real layouts."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from scope.models.synthetic.text import (
    SYNTHETIC_UMT5,
    tokenizer_size,
    umt5_state_dict,
    write_tokenizer,
    write_umt5_encoder,
)
from scope.pipelines.wan.text_encoder import (
    TEXT_LEN,
    UMT5_FILENAME,
    UMT5_XXL,
    TextEncoder,
    UMT5Shape,
    clean_text,
    hf_key,
    infer_shape,
    load_tokenizer,
)

PROMPTS = ["a red cat walking on the beach", "a blue robot flying over the city at night"]
_TINY = UMT5Shape(vocab_size=128, d_model=64, num_layers=1, num_heads=2, d_kv=8, d_ff=32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("umt5")
    tokenizer_dir = write_tokenizer(root / "Wan2.1-T2V-1.3B" / "google" / "umt5-xxl", seed=3)
    weights = write_umt5_encoder(root / "WanVideo_comfy" / UMT5_FILENAME, seed=5)
    return weights, tokenizer_dir


@pytest.fixture(scope="module")
def encoder(files):
    weights, tokenizer_dir = files
    return TextEncoder.load(weights, tokenizer_dir, device="cpu", dtype=torch.float32)


def _token_counts(encoder, texts):
    _, mask = encoder.tokenize([clean_text(t) for t in texts])
    return mask.sum(dim=1).tolist()


# Files and loading ----------------------------------------------------------------------------


def test_synthetic_file_has_the_kijai_dtypes_and_the_real_width(files):
    state = load_file(str(files[0]))
    assert state["token_embedding.weight"].dtype == torch.bfloat16
    assert state["token_embedding.weight"].shape == (SYNTHETIC_UMT5.vocab_size, 4096)
    assert state["blocks.0.attn.q.weight"].dtype == torch.float8_e4m3fn
    assert state["blocks.1.ffn.fc2.weight"].dtype == torch.float8_e4m3fn
    assert state["blocks.0.pos_embedding.embedding.weight"].shape == (32, SYNTHETIC_UMT5.num_heads)
    assert SYNTHETIC_UMT5.vocab_size >= tokenizer_size() and SYNTHETIC_UMT5.vocab_size % 128 == 0


def test_encode_shape_dim_and_finite(encoder):
    out = encoder.encode(PROMPTS)
    assert out.shape == (2, TEXT_LEN, 4096) and out.dtype == torch.float32
    assert encoder.dim == 4096
    assert torch.isfinite(out).all()


def test_positions_past_the_token_count_are_exactly_zero(encoder):
    out = encoder.encode(PROMPTS)
    counts = _token_counts(encoder, PROMPTS)
    assert counts[0] != counts[1]
    for row, count in zip(out, counts, strict=True):
        assert torch.count_nonzero(row[count:]) == 0
        assert (row[:count].norm(dim=-1) > 1.0).all()


def test_different_prompts_differ_and_the_same_prompt_repeats_exactly(files, encoder):
    out = encoder.encode(PROMPTS)
    assert (out[0] - out[1]).norm() > 10.0
    uncached = TextEncoder.load(*files, cache_size=0)
    first = uncached.encode([PROMPTS[0]])
    assert torch.equal(first, uncached.encode([PROMPTS[0]]))
    assert torch.equal(first[0], out[0])


def test_whitespace_cleaning():
    assert clean_text("  a   red\n\tcat &amp;amp; dog  ") == "a red cat & dog"
    assert clean_text("caf\u00c3\u00a9 lights") == "caf\u00e9 lights"


def test_cleaned_prompts_share_an_embedding(encoder):
    a, b = encoder.encode(["  a red   cat\n", "a red cat"])
    assert torch.equal(a, b)


def test_repeated_prompts_are_not_re_encoded_and_the_cache_is_bounded(files):
    enc = TextEncoder.load(*files, cache_size=2)
    calls = []
    original = enc._encode_cleaned
    enc._encode_cleaned = lambda texts: calls.append(list(texts)) or original(texts)
    enc.encode(["a cat", "a dog", "a cat"])
    assert calls == [["a cat", "a dog"]]
    enc.encode(["a  dog", "a cat"])
    assert len(calls) == 1
    enc.encode(["a fox"])
    assert list(enc._cache) == ["a cat", "a fox"]
    enc.encode(["a dog"])
    assert calls[-1] == ["a dog"]


def test_bfloat16_load_tracks_float32(files, encoder):
    half = TextEncoder.load(*files, dtype=torch.bfloat16)
    out = half.encode([PROMPTS[0]])
    assert out.dtype == torch.bfloat16
    ref = encoder.encode([PROMPTS[0]])
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05


# fp8 -------------------------------------------------------------------------------------------


def test_fp8_upcast_equals_float32_file_of_the_rounded_values(tmp_path, files, encoder):
    rounded = {key: value.to(torch.float32) for key, value in load_file(str(files[0])).items()}
    path = tmp_path / "fp32.safetensors"
    save_file(rounded, str(path))
    wide = TextEncoder.load(path, files[1])
    assert torch.equal(wide.encode(PROMPTS), encoder.encode(PROMPTS))
    q = encoder.model.encoder.block[0].layer[0].SelfAttention.q.weight
    assert q.dtype == torch.float32 and torch.equal(q, rounded["blocks.0.attn.q.weight"])
    exact = torch.randn(q.shape, generator=torch.Generator().manual_seed(0)) * 0.01
    assert not torch.equal(exact.to(torch.float8_e4m3fn).to(torch.float32), exact)


# Strict key check ------------------------------------------------------------------------------


def _variant(tmp_path, files, edit):
    state = load_file(str(files[0]))
    edit(state)
    path = tmp_path / "edited.safetensors"
    save_file(state, str(path))
    return path


@pytest.mark.parametrize(
    "edit,key",
    [
        (lambda s: s.pop("blocks.1.ffn.fc2.weight"), "blocks.1.ffn.fc2.weight"),
        (lambda s: s.pop("norm.weight"), "norm.weight"),
        (lambda s: s.pop("token_embedding.weight"), "token_embedding.weight"),
        (lambda s: s.__setitem__("blocks.0.attn.q.bias", torch.zeros(128)), "blocks.0.attn.q.bias"),
        (lambda s: s.__setitem__("shared.weight", torch.zeros(4, 4)), "shared.weight"),
        (lambda s: s.__setitem__("blocks.1.norm2.weight", torch.ones(4095, dtype=torch.bfloat16)), "blocks.1.norm2.weight"),
        (lambda s: s.__setitem__("blocks.0.ffn.gate.0.weight", torch.zeros(255, 4096, dtype=torch.float8_e4m3fn)), "blocks.0.ffn.gate.0.weight"),
    ],
    ids=["missing-fc2", "missing-norm", "missing-embedding", "unexpected-bias", "unexpected-hf-name", "shape-norm2", "shape-gate"],
)
def test_strict_load_names_file_and_key(tmp_path, files, edit, key):
    path = _variant(tmp_path, files, edit)
    with pytest.raises(ValueError) as caught:
        TextEncoder.load(path, files[1])
    assert key in str(caught.value) and str(path) in str(caught.value)


# Key table at the real sizes -------------------------------------------------------------------


def _spec_key_table():
    """The UMT5-XXL layout, written out by hand: name -> (shape, dtype in the Kijai file)."""
    fp8, bf16 = torch.float8_e4m3fn, torch.bfloat16
    table = {"token_embedding.weight": ((256384, 4096), bf16), "norm.weight": ((4096,), bf16)}
    for i in range(24):
        table[f"blocks.{i}.norm1.weight"] = ((4096,), bf16)
        for name in "qkvo":
            table[f"blocks.{i}.attn.{name}.weight"] = ((4096, 4096), fp8)
        table[f"blocks.{i}.norm2.weight"] = ((4096,), bf16)
        table[f"blocks.{i}.ffn.gate.0.weight"] = ((10240, 4096), fp8)
        table[f"blocks.{i}.ffn.fc1.weight"] = ((10240, 4096), fp8)
        table[f"blocks.{i}.ffn.fc2.weight"] = ((4096, 10240), fp8)
        table[f"blocks.{i}.pos_embedding.embedding.weight"] = ((32, 64), bf16)
    return table


def test_real_size_key_table_matches_the_spec():
    state = umt5_state_dict(UMT5_XXL, seed=0, device="meta")
    assert {k: (tuple(v.shape), v.dtype) for k, v in state.items()} == _spec_key_table()
    assert all(v.device.type == "meta" for v in state.values())
    shape = infer_shape({k: tuple(v.shape) for k, v in state.items()})
    assert shape == UMT5_XXL
    assert sum(v.numel() for v in state.values()) == pytest.approx(5.68e9, rel=0.01)


def test_real_size_map_covers_every_transformers_parameter_once():
    from transformers import UMT5EncoderModel

    with torch.device("meta"):
        model = UMT5EncoderModel(UMT5_XXL.hf_config())
    params = {name: tuple(p.shape) for name, p in model.named_parameters()}
    mapped = {hf_key(k): shape for k, (shape, _) in _spec_key_table().items()}
    assert mapped == params


# Independent math ------------------------------------------------------------------------------


def _bucket(rel: torch.Tensor) -> torch.Tensor:
    """T5 bidirectional buckets: 16 per direction, exact below 8."""
    offset = (rel > 0).long() * 16
    n = rel.abs()
    log_part = torch.log(n.clamp(min=1).float() / 8) / math.log(128 / 8) * 8
    large = torch.clamp(8 + log_part.long(), max=15)
    return offset + torch.where(n < 8, n, large)


def _rms(x, w):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6))


def _gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _reference_encoder(sd, ids, mask):
    """Wan's encoder written from the spec on the raw Wan-named tensors."""
    x = sd["token_embedding.weight"][ids]
    b, length, _ = x.shape
    heads = sd["blocks.0.pos_embedding.embedding.weight"].shape[1]
    pos = torch.arange(length)
    buckets = _bucket(pos[None, :] - pos[:, None])
    pad = torch.zeros(b, 1, 1, length).masked_fill(~mask.bool()[:, None, None, :], torch.finfo(torch.float32).min)
    layers = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(layers):
        p = f"blocks.{i}."
        h = _rms(x, sd[p + "norm1.weight"])
        q, k, v = (h @ sd[p + f"attn.{n}.weight"].T for n in "qkv")
        q, k, v = (t.view(b, length, heads, -1) for t in (q, k, v))
        bias = sd[p + "pos_embedding.embedding.weight"][buckets].permute(2, 0, 1)[None]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) + bias + pad
        o = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v).reshape(b, length, -1)
        x = x + o @ sd[p + "attn.o.weight"].T
        h = _rms(x, sd[p + "norm2.weight"])
        x = x + ((h @ sd[p + "ffn.fc1.weight"].T) * _gelu_tanh(h @ sd[p + "ffn.gate.0.weight"].T)) @ sd[p + "ffn.fc2.weight"].T
    x = _rms(x, sd["norm.weight"])
    keep = pos[None, :] < mask.sum(1)[:, None]
    return x * keep[..., None]


def test_encoder_matches_an_independent_computation_from_the_wan_tensors(files, encoder):
    sd = {k: v.to(torch.float32) for k, v in load_file(str(files[0])).items()}
    ids, mask = encoder.tokenize(PROMPTS)
    expected = _reference_encoder(sd, ids, mask)
    torch.testing.assert_close(encoder.encode(PROMPTS), expected, rtol=1e-4, atol=1e-4)


def test_bucket_table_agrees_with_the_spec_landmarks():
    rel = torch.tensor([0, 1, 7, 8, 15, 16, 127, 128, 500, -1, -8, -500])
    assert _bucket(rel).tolist() == [0, 17, 23, 24, 25, 26, 31, 31, 31, 1, 8, 15]


# Tokenizer -------------------------------------------------------------------------------------


def test_tokenizer_folder_layout_and_special_ids(files):
    folder = files[1]
    assert folder.parts[-2:] == ("google", "umt5-xxl")
    names = {p.name for p in folder.iterdir()}
    assert names == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "spiece.model"}
    tok = load_tokenizer(folder)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 3)
    assert len(tok) == tokenizer_size()
    ids = tok("a red cat")["input_ids"]
    assert ids[-1] == 1 and len(ids) == 4


def test_auto_tokenizer_loads_the_folder_offline_with_the_same_ids(files, encoder):
    from transformers import AutoTokenizer

    auto = AutoTokenizer.from_pretrained(str(files[1]), local_files_only=True)
    for text in PROMPTS + ["Flowers glowing brightly, 42 times!"]:
        kwargs = dict(padding="max_length", truncation=True, max_length=TEXT_LEN, add_special_tokens=True)
        assert auto(text, **kwargs)["input_ids"] == encoder.tokenizer(text, **kwargs)["input_ids"]


def test_tokenizer_agrees_with_sentencepiece_on_its_own_model(files):
    import sentencepiece as spm
    processor = spm.SentencePieceProcessor(model_file=str(files[1] / "spiece.model"))
    tok = load_tokenizer(files[1])
    assert processor.get_piece_size() + 300 == len(tok)
    for text in ["a red cat walking on the beach", "Zebras jumped quickly over 3 moons", "caf\u00e9 \u4e16\u754c lights"]:
        assert tok(text)["input_ids"] == processor.encode(text) + [1]
    assert 3 in tok("\u4e16")["input_ids"]


def test_prompt_length_truncates_to_512_with_eos(encoder):
    ids, mask = encoder.tokenize([" ".join(["cat"] * 600)])
    assert ids.shape == (1, TEXT_LEN) and int(mask.sum()) == TEXT_LEN and int(ids[0, -1]) == 1


# Writers ---------------------------------------------------------------------------------------


def test_writers_are_deterministic_for_a_seed(tmp_path):
    a = write_umt5_encoder(tmp_path / "a.safetensors", seed=1, config=_TINY)
    b = write_umt5_encoder(tmp_path / "b.safetensors", seed=1, config=_TINY)
    c = write_umt5_encoder(tmp_path / "c.safetensors", seed=2, config=_TINY)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    t1, t2, t3 = (write_tokenizer(tmp_path / name, seed=s) for name, s in (("t1", 4), ("t2", 4), ("t3", 5)))
    for name in ("tokenizer.json", "spiece.model", "tokenizer_config.json"):
        assert (t1 / name).read_bytes() == (t2 / name).read_bytes()
    ids = [load_tokenizer(t)("a red cat")["input_ids"] for t in (t1, t3)]
    assert ids[0] != ids[1] and len(ids[0]) == len(ids[1])
