"""Architecture hyper-parameters of the Wan2.1 generator, read from the original `config.json`."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Keys every original-Wan config.json carries; the rest fall back to the class defaults.
_REQUIRED = ("dim", "ffn_dim", "num_heads", "num_layers")


@dataclass(frozen=True)
class WanConfig:
    """Shape of one Wan2.1 text-to-video DiT (the fields of the original `WanModel.__init__`)."""

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    freq_dim: int = 256
    text_len: int = 512
    text_dim: int = 4096
    in_dim: int = 16
    out_dim: int = 16
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3:
            raise ValueError(f"patch_size must have 3 entries, got {self.patch_size}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim {self.dim} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 2 or self.head_dim < 6:
            raise ValueError(f"head_dim {self.head_dim} must be even and at least 6 for 3-axis RoPE")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim {self.freq_dim} must be even")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        p, q, r = self.patch_size
        return p * q * r

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> WanConfig:
        """Build from an original-Wan config dict; unknown keys (`_class_name`, ...) are ignored."""
        model_type = data.get("model_type", "t2v")
        if model_type != "t2v":
            raise ValueError(f"{source}: model_type {model_type!r} is not supported (only 't2v')")
        missing = [key for key in _REQUIRED if key not in data]
        if missing:
            raise ValueError(f"{source}: missing required keys {missing}")
        names = {field.name for field in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    @classmethod
    def from_json(cls, path: str | Path) -> WanConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object")
        return cls.from_dict(data, source=str(path))

    def to_json_dict(self) -> dict[str, Any]:
        """The original-Wan `config.json` layout; class-default-only fields are written only when changed."""
        out: dict[str, Any] = {
            "_class_name": "WanModel",
            "_diffusers_version": "0.30.0",
            "dim": self.dim,
            "eps": self.eps,
            "ffn_dim": self.ffn_dim,
            "freq_dim": self.freq_dim,
            "in_dim": self.in_dim,
            "model_type": "t2v",
            "num_heads": self.num_heads,
            "num_layers": self.num_layers,
            "out_dim": self.out_dim,
            "text_len": self.text_len,
        }
        for name in ("text_dim", "patch_size", "qk_norm", "cross_attn_norm"):
            value = getattr(self, name)
            default = next(f.default for f in dataclasses.fields(self) if f.name == name)
            if value != default:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


WAN_1_3B_CONFIG = WanConfig(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30)
WAN_14B_CONFIG = WanConfig(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40)
SYNTHETIC_WAN_CONFIG = WanConfig(dim=256, ffn_dim=512, num_heads=2, num_layers=2)
#: The synthetic stand-in for the 14B architecture (Krea): its own size, so a load that read the
#: 1.3B config instead would fail on the first key.
SYNTHETIC_WAN_14B_CONFIG = WanConfig(dim=384, ffn_dim=768, num_heads=3, num_layers=3)
