"""The UMT5-XXL text encoder and its tokenizer, loaded from the Wan-named fp8 checkpoint.

The network is transformers' ``UMT5EncoderModel``, which is numerically the Wan ``umt5_xxl``
encoder (gated GELU-tanh FFN, unscaled attention, per-layer relative bias). What this module
adds is the checkpoint handling the library lacks: Wan key names, fp8 weights upcast once at
load, a strict key check (upstream loads non-strictly, so a wrong file silently gives garbage),
and the Wan post-processing that zeroes every position past the prompt's token count.
"""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

#: File name of the Kijai encoder checkpoint.
UMT5_FILENAME = "umt5-xxl-enc-fp8_e4m3fn.safetensors"
#: Every prompt is padded (or truncated) to this many tokens.
TEXT_LEN = 512
#: Default number of cleaned prompts whose embeddings are kept.
CACHE_SIZE = 64


@dataclass(frozen=True)
class UMT5Shape:
    """The sizes that a Wan UMT5 checkpoint determines; the rest is fixed by the architecture."""

    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    d_kv: int
    d_ff: int
    num_buckets: int = 32

    def hf_config(self):
        """The equivalent ``UMT5Config``: encoder only, no dropout, bucket distance 128."""
        from transformers import UMT5Config

        return UMT5Config(
            vocab_size=self.vocab_size,
            d_model=self.d_model,
            d_kv=self.d_kv,
            d_ff=self.d_ff,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            relative_attention_num_buckets=self.num_buckets,
            relative_attention_max_distance=128,
            feed_forward_proj="gated-gelu",
            layer_norm_epsilon=1e-6,
            dropout_rate=0.0,
            is_encoder_decoder=False,
            use_cache=False,
            pad_token_id=0,
            eos_token_id=1,
        )


#: The released UMT5-XXL encoder.
UMT5_XXL = UMT5Shape(vocab_size=256384, d_model=4096, num_layers=24, num_heads=64, d_kv=64, d_ff=10240)


# Key names ----------------------------------------------------------------------------------

#: Wan name inside ``blocks.{i}.`` -> transformers name inside ``encoder.block.{i}.``.
_BLOCK_KEYS = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_BLOCK_RE = re.compile(r"blocks\.(\d+)\.(.+)")


def wan_key_shapes(shape: UMT5Shape) -> dict[str, tuple[int, ...]]:
    """Every key of a Wan UMT5 encoder file with its shape, in file order."""
    inner = shape.num_heads * shape.d_kv
    per_block = {
        "norm1.weight": (shape.d_model,),
        "attn.q.weight": (inner, shape.d_model),
        "attn.k.weight": (inner, shape.d_model),
        "attn.v.weight": (inner, shape.d_model),
        "attn.o.weight": (shape.d_model, inner),
        "norm2.weight": (shape.d_model,),
        "ffn.gate.0.weight": (shape.d_ff, shape.d_model),
        "ffn.fc1.weight": (shape.d_ff, shape.d_model),
        "ffn.fc2.weight": (shape.d_model, shape.d_ff),
        "pos_embedding.embedding.weight": (shape.num_buckets, shape.num_heads),
    }
    keys: dict[str, tuple[int, ...]] = {"token_embedding.weight": (shape.vocab_size, shape.d_model)}
    for i in range(shape.num_layers):
        keys.update({f"blocks.{i}.{name}": dims for name, dims in per_block.items()})
    keys["norm.weight"] = (shape.d_model,)
    return keys


def hf_key(wan_key: str) -> str:
    """The transformers parameter name of a Wan key (the embedding maps to ``shared``)."""
    if wan_key == "token_embedding.weight":
        return "shared.weight"
    if wan_key == "norm.weight":
        return "encoder.final_layer_norm.weight"
    match = _BLOCK_RE.fullmatch(wan_key)
    if match is None or match.group(2) not in _BLOCK_KEYS:
        raise KeyError(wan_key)
    return f"encoder.block.{match.group(1)}.{_BLOCK_KEYS[match.group(2)]}"


def infer_shape(shapes: Mapping[str, Sequence[int]], source: str = "state dict") -> UMT5Shape:
    """Read the sizes off the tensor shapes; a key they need is named when absent."""
    needed = ("token_embedding.weight", "blocks.0.pos_embedding.embedding.weight", "blocks.0.attn.q.weight", "blocks.0.ffn.fc1.weight")
    for key in needed:
        if key not in shapes:
            raise ValueError(f"{source}: missing key {key!r}")
    vocab_size, d_model = shapes["token_embedding.weight"]
    num_buckets, num_heads = shapes["blocks.0.pos_embedding.embedding.weight"]
    inner = shapes["blocks.0.attn.q.weight"][0]
    if num_heads <= 0 or inner % num_heads:
        raise ValueError(f"{source}: key 'blocks.0.attn.q.weight' has {inner} rows, not a multiple of {num_heads} heads")
    layers = {int(m.group(1)) for key in shapes if (m := _BLOCK_RE.fullmatch(key))}
    return UMT5Shape(
        vocab_size=int(vocab_size),
        d_model=int(d_model),
        num_layers=max(layers) + 1,
        num_heads=int(num_heads),
        d_kv=inner // num_heads,
        d_ff=int(shapes["blocks.0.ffn.fc1.weight"][0]),
        num_buckets=int(num_buckets),
    )


def check_keys(shapes: Mapping[str, Sequence[int]], expected: Mapping[str, tuple[int, ...]], source: str) -> None:
    """Strict load: a missing key, an unexpected key or a wrong shape is an error naming it."""
    for key, dims in expected.items():
        if key not in shapes:
            raise ValueError(f"{source}: missing key {key!r}")
        if tuple(shapes[key]) != dims:
            raise ValueError(f"{source}: key {key!r} has shape {tuple(shapes[key])}, expected {dims}")
    for key in shapes:
        if key not in expected:
            raise ValueError(f"{source}: unexpected key {key!r}")


# Loading ------------------------------------------------------------------------------------


def load_umt5(path: str | Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Build ``UMT5EncoderModel`` from a Wan-named file, each tensor upcast once to ``dtype``.

    The module is created on the meta device and the loaded tensors are assigned into it, so
    the 6.7 GB checkpoint is never materialised twice: peak memory is the model plus one tensor.
    """
    from safetensors import safe_open
    from transformers import UMT5EncoderModel

    path = Path(path)
    source = str(path)
    with safe_open(source, framework="pt", device="cpu") as file:
        shapes = {key: tuple(file.get_slice(key).get_shape()) for key in file.keys()}
        shape = infer_shape(shapes, source)
        check_keys(shapes, wan_key_shapes(shape), source)
        state: dict[str, torch.Tensor] = {}
        for key in shapes:
            tensor = file.get_tensor(key)
            if not tensor.is_floating_point():
                raise ValueError(f"{source}: key {key!r} has non-float dtype {tensor.dtype}")
            state[hf_key(key)] = tensor.to(device=device).to(dtype)
            del tensor
    state["encoder.embed_tokens.weight"] = state["shared.weight"]

    config = shape.hf_config()
    with torch.device("meta"):
        model = UMT5EncoderModel(config)
    model.load_state_dict(state, strict=True, assign=True)
    model.encoder.embed_tokens = model.shared
    return model.eval().requires_grad_(False)


# Tokenizer ----------------------------------------------------------------------------------


def clean_text(text: str) -> str:
    """Wan's "whitespace" cleaning: fix mojibake, unescape HTML twice, collapse whitespace."""
    import ftfy

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(tokenizer_dir: str | Path):
    """The UMT5 tokenizer from a local folder, never the hub.

    When ``tokenizer.json`` is present it is read verbatim, which is what the reference's
    transformers 4.x did. ``AutoTokenizer`` in transformers 5 routes this folder's
    ``T5Tokenizer`` class to a constructor that rebuilds the pipeline with the unknown id
    hard-coded to 2, which in UMT5's vocabulary is ``<s>``, not ``<unk>``.
    """
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    folder = Path(tokenizer_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    if (folder / "tokenizer.json").is_file():
        return PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# The encoder --------------------------------------------------------------------------------


class TextEncoder:
    """Prompts in, ``[N, 512, d_model]`` embeddings out, zero past each prompt's tokens.

    Embeddings are cached per cleaned prompt (least recently used first out), since streams
    re-send the same prompts and encoding is the costly part of a prompt change.
    """

    def __init__(self, model, tokenizer, *, cache_size: int = CACHE_SIZE):
        self.model = model
        self.tokenizer = tokenizer
        self.cache_size = cache_size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    @classmethod
    def load(
        cls,
        weights_path: str | Path,
        tokenizer_dir: str | Path,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        cache_size: int = CACHE_SIZE,
    ) -> TextEncoder:
        """Load the Kijai fp8 file (strictly) and the tokenizer folder."""
        tokenizer = load_tokenizer(tokenizer_dir)
        model = load_umt5(weights_path, device=device, dtype=dtype)
        return cls(model, tokenizer, cache_size=cache_size)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return self.model.shared.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.shared.weight.dtype

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids and attention mask, ``[N, 512]`` each, EOS appended, padded with id 0."""
        batch = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=TEXT_LEN,
            add_special_tokens=True,
            return_tensors="pt",
        )
        return batch["input_ids"], batch["attention_mask"]

    @torch.no_grad()
    def _encode_cleaned(self, texts: list[str]) -> torch.Tensor:
        ids, mask = self.tokenize(texts)
        ids, mask = ids.to(self.device), mask.to(self.device)
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        seq_lens = mask.gt(0).sum(dim=1)
        keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < seq_lens[:, None]
        return hidden.masked_fill(~keep[..., None], 0.0)

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Encode prompts as one batch; prompts seen recently come from the cache."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of prompts, not a single string")
        cleaned = [clean_text(text) for text in texts]
        found: dict[str, torch.Tensor] = {}
        for text in cleaned:
            if text in self._cache:
                self._cache.move_to_end(text)
                found[text] = self._cache[text]
        missing = list(dict.fromkeys(text for text in cleaned if text not in found))
        if missing:
            for text, row in zip(missing, self._encode_cleaned(missing), strict=True):
                found[text] = row.clone()
                self._remember(text, found[text])
        if not cleaned:
            return torch.zeros((0, TEXT_LEN, self.dim), device=self.device, dtype=self.dtype)
        return torch.stack([found[text] for text in cleaned])

    def cached_embeddings(self) -> list[torch.Tensor]:
        """The embeddings kept for prompts seen lately (they fill with use, up to ``cache_size``)."""
        return list(self._cache.values())

    def _remember(self, text: str, row: torch.Tensor) -> None:
        if self.cache_size <= 0:
            return
        self._cache[text] = row
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    __call__ = encode
