"""Synthetic UMT5 encoder and tokenizer files in the real layouts.

The encoder file has the Kijai key names and dtypes (fp8 e4m3fn linear weights without scales,
16-bit everything else) and the real model width of 4096, so its output fits the generator's
``text_dim``; depth, heads and FFN are tiny. The tokenizer folder has the files of
``google/umt5-xxl`` (``tokenizer.json``, ``spiece.model``, ``tokenizer_config.json``,
``special_tokens_map.json``) with the same special-token layout, over a small English
vocabulary so that different prompts get different ids.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import torch

from scope.pipelines.wan.text_encoder import UMT5Shape, wan_key_shapes

META = "\u2581"
#: Sentinel tokens appended after the sentencepiece vocabulary, last one first (as in UMT5).
EXTRA_IDS = 300
#: Special pieces at the start of the vocabulary, in UMT5's order.
SPECIAL_PIECES = ("<pad>", "</s>", "<s>", "<unk>")
PAD_ID, EOS_ID, BOS_ID, UNK_ID = 0, 1, 2, 3
#: Sentencepiece piece types.
_NORMAL, _UNKNOWN, _CONTROL = 1, 2, 3

_WORDS = """
a an the and or but of in on at to from with without by for over under above below between
through into onto across along around behind beside near far inside outside up down left right
front back top bottom middle center edge side corner is are was were be been being has have had
do does did will would can could should may it its this that these those there here then than as
so very more most less few many much some all any each every no not only just also still even
again once twice one two three four five six seven eight nine ten hundred thousand first second
third last man woman person people child children boy girl baby family friend crowd team cat dog
bird fish horse cow sheep pig lion tiger bear wolf fox deer rabbit mouse elephant monkey snake frog
turtle whale dolphin shark owl eagle duck chicken bee butterfly dragon robot alien monster ghost
wizard knight king queen prince princess soldier pilot tree forest flower grass leaf leaves plant
garden field meadow jungle desert island mountain hill valley river lake ocean sea beach wave waves
shore cliff cave rock stone sky cloud clouds sun moon star stars planet galaxy space universe rain
snow storm wind fog mist thunder lightning rainbow fire flame smoke ice water light shadow darkness
city town village street road bridge building house home castle tower church temple room kitchen
window door wall floor roof stairs table chair bed lamp mirror clock car truck bus train plane boat
ship bicycle motorcycle rocket spaceship helicopter morning evening night day sunset sunrise dusk
dawn noon midnight summer winter spring autumn red orange yellow green blue purple pink brown black
white gray grey gold silver bright dark dim glowing shiny colorful vivid pale neon golden crimson
azure emerald big small large tiny huge giant little tall short long wide narrow thick thin deep
old young new ancient modern futuristic vintage retro classic rustic beautiful pretty ugly cute
scary calm peaceful quiet loud busy empty full crowded happy sad angry afraid excited tired lonely
proud gentle fierce brave wild strange hot cold warm cool wet dry soft hard smooth rough sharp
heavy fast slow walk walking run running jump jumping fly flying swim swimming dance dancing sing
singing sit sitting stand standing sleep sleeping eat eating drink drinking play playing look
looking watch watching see seeing hold holding carry carrying throw throwing drive driving ride
riding climb climbing fall falling float floating spin spinning burn burning melt melting grow
growing move moving turn turning open opening close smile smiling laugh laughing cry crying talk
talking shout whisper waving rise rising shine shining glow sparkle flicker drift drifting flow
flowing cinematic realistic photorealistic detailed high quality resolution focus camera shot
closeup angle aerial view zoom pan tracking motion film movie scene frame video style painting
drawing sketch illustration photo photograph anime cartoon watercolor oil pastel digital render
rendered lighting studio portrait landscape abstract surreal fantasy magic magical mysterious epic
dramatic dreamy steampunk cyberpunk gothic baroque minimalist impressionist cubist pixel art texture
pattern shape circle square triangle line curve spiral grid dots stripes glass metal wood paper
cloth silk leather plastic crystal diamond marble sand dust face eyes eye hair hand hands arm arms
leg legs head body skin mouth nose ear hat coat dress shirt shoes mask crown sword shield armor
cape helmet glasses food bread apple cake coffee tea wine cup bowl plate bottle candle book letter
music song guitar piano drum violin sound voice dream memory story world life time path trail
track way journey travel adventure war battle peace love hope fear toward towards beneath upon
within while during after before until slowly quickly gently softly suddenly slightly highly fully
deeply brightly made make makes making take taking give giving come coming go going get getting
begin begins end ends start starts stop stops keep keeps leave find finds show shows showing
appear appears disappear transform transforms become becomes morph morphing blend blending fade
fading explode explosion shatter crash splash reflection reflections silhouette horizon skyline
lights streetlights traffic market festival party concert parade ceremony wedding celebration
holiday robotic mechanical organic natural artificial electric nuclear cosmic underwater
""".split()
_SUFFIXES = ("es", "ed", "ing", "ly", "er", "est")
_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,!?'\"-:;()/&%+=*#@"


def tokenizer_pieces(seed: int = 0) -> list[tuple[str, float, int]]:
    """The sentencepiece vocabulary ``(piece, score, type)``: specials, words, suffixes, characters.

    Whole words score above their spellings, so a known word is one token. ``seed`` only
    permutes the word ids; segmentation and vocabulary size do not depend on it.
    """
    words = list(dict.fromkeys(_WORDS))
    random.Random(seed).shuffle(words)
    pieces = [(SPECIAL_PIECES[0], 0.0, _CONTROL), (SPECIAL_PIECES[1], 0.0, _CONTROL)]
    pieces += [(SPECIAL_PIECES[2], 0.0, _CONTROL), (SPECIAL_PIECES[3], 0.0, _UNKNOWN), (META, -4.0, _NORMAL)]
    pieces += [(META + word, -6.0 - 0.1 * len(word), _NORMAL) for word in words]
    pieces += [(suffix, -9.0, _NORMAL) for suffix in _SUFFIXES]
    pieces += [(char, -12.0, _NORMAL) for char in _CHARS]
    return pieces


def tokenizer_size() -> int:
    """Token count of the synthetic tokenizer: sentencepiece pieces plus the sentinels."""
    return len(tokenizer_pieces()) + EXTRA_IDS


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


#: Real width (the generator's ``text_dim``), tiny otherwise. Embedding rows are padded to a
#: multiple of 128, as UMT5's 256384 rows are for its 256300 tokens.
SYNTHETIC_UMT5 = UMT5Shape(
    vocab_size=_round_up(tokenizer_size(), 128), d_model=4096, num_layers=2, num_heads=2, d_kv=64, d_ff=256
)


# Encoder ------------------------------------------------------------------------------------

_LINEAR_STD = {
    "attn.q.weight": 0.01,
    "attn.k.weight": 0.02,
    "attn.v.weight": 0.02,
    "attn.o.weight": 0.05,
    "ffn.gate.0.weight": 0.02,
    "ffn.fc1.weight": 0.02,
    "ffn.fc2.weight": 0.05,
}


def _is_linear(key: str) -> bool:
    return any(key.endswith(name) for name in _LINEAR_STD)


def _file_dtype(key: str) -> torch.dtype:
    return torch.float8_e4m3fn if _is_linear(key) else torch.bfloat16


def _values(key: str, dims: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    """Float32 values whose fp8 rounding stays mostly in the normal range, norms near 1."""
    noise = torch.randn(dims, generator=gen)
    if _is_linear(key):
        std = next(s for name, s in _LINEAR_STD.items() if key.endswith(name))
        return noise * std
    if key.endswith("norm1.weight") or key.endswith("norm2.weight") or key == "norm.weight":
        return 1.0 + 0.1 * noise
    return noise


def umt5_state_dict(config: UMT5Shape = SYNTHETIC_UMT5, seed: int = 0, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """A Wan-named encoder state dict in the file's dtypes; on ``"meta"`` only shapes exist."""
    device = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, dims in wan_key_shapes(config).items():
        dtype = _file_dtype(key)
        if device.type == "meta":
            state[key] = torch.empty(dims, dtype=dtype, device=device)
        else:
            state[key] = _values(key, dims, gen).to(dtype).to(device)
    return state


def write_umt5_encoder(path: str | Path, seed: int = 0, *, config: UMT5Shape = SYNTHETIC_UMT5) -> Path:
    """Write a synthetic ``umt5-xxl-enc-fp8_e4m3fn.safetensors`` at exactly ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(umt5_state_dict(config, seed), str(path), metadata={"format": "pt"})
    return path


# Tokenizer ----------------------------------------------------------------------------------


def _sentinels(first_id: int) -> list[tuple[int, str]]:
    return [(first_id + i, f"<extra_id_{EXTRA_IDS - 1 - i}>") for i in range(EXTRA_IDS)]


def _tokenizer_json(pieces: list[tuple[str, float, int]]) -> str:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    sentinels = _sentinels(len(pieces))
    vocab = [(piece, score) for piece, score, _ in pieces] + [(token, 0.0) for _, token in sentinels]
    tok = Tokenizer(Unigram(vocab, unk_id=UNK_ID, byte_fallback=False))
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=META, prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement=META, prepend_scheme="always", split=True)
    specials = list(SPECIAL_PIECES) + [token for _, token in sentinels]
    tok.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    tok.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", EOS_ID)]
    )
    return tok.to_str(pretty=True)


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, wire: int, payload: bytes) -> bytes:
    return _varint(number << 3 | wire) + payload


def _message(number: int, body: bytes) -> bytes:
    return _field(number, 2, _varint(len(body)) + body)


def _int(number: int, value: int) -> bytes:
    return _field(number, 0, _varint(value))


def spiece_model(pieces: list[tuple[str, float, int]]) -> bytes:
    """The serialized sentencepiece ``ModelProto`` (unigram, identity normalisation)."""
    body = b"".join(
        _message(1, _message(1, piece.encode()) + _field(2, 5, struct.pack("<f", score)) + _int(3, kind))
        for piece, score, kind in pieces
    )
    trainer = _int(3, 1) + _int(4, len(pieces)) + _int(35, 0)
    trainer += _int(40, UNK_ID) + _int(41, BOS_ID) + _int(42, EOS_ID) + _int(43, PAD_ID)
    normalizer = _message(1, b"identity") + _int(3, 1) + _int(4, 1) + _int(5, 1)
    return body + _message(2, trainer) + _message(3, normalizer)


def _special(token: str) -> dict:
    return {"content": token, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False, "special": True}


def _tokenizer_config(pieces: list[tuple[str, float, int]]) -> dict:
    added = {str(i): _special(token) for i, token in enumerate(SPECIAL_PIECES)}
    added.update({str(i): _special(token) for i, token in _sentinels(len(pieces))})
    return {
        "added_tokens_decoder": added,
        "additional_special_tokens": [f"<extra_id_{i}>" for i in range(EXTRA_IDS)],
        "bos_token": "<s>",
        "clean_up_tokenization_spaces": True,
        "eos_token": "</s>",
        "extra_ids": EXTRA_IDS,
        "legacy": True,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": "<pad>",
        "sp_model_kwargs": {},
        "spaces_between_special_tokens": False,
        "tokenizer_class": "T5Tokenizer",
        "unk_token": "<unk>",
    }


def write_tokenizer(directory: str | Path, seed: int = 0) -> Path:
    """Write the four tokenizer files of ``google/umt5-xxl`` into ``directory`` itself."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    pieces = tokenizer_pieces(seed)
    (directory / "tokenizer.json").write_text(_tokenizer_json(pieces), encoding="utf-8")
    (directory / "spiece.model").write_bytes(spiece_model(pieces))
    config = _tokenizer_config(pieces)
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    special = {key: config[key] for key in ("additional_special_tokens", "bos_token", "eos_token", "pad_token", "unk_token")}
    (directory / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    return directory
