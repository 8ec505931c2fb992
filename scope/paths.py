"""Client-named paths, kept inside their directory."""

from __future__ import annotations

from pathlib import Path


class PathOutside(ValueError):
    """A client path that resolves outside its allowed directory."""


def resolve_inside(base: Path, name: str | Path) -> Path:
    """Resolve ``name`` (absolute, or relative to ``base``) and insist it stays inside ``base``.

    Containment is checked on resolved paths (symlinks and ``..`` followed), component by
    component, so a sibling such as ``assets2`` never passes for ``assets``.
    """
    root = base.resolve()
    candidate = Path(name)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if resolved != root and not resolved.is_relative_to(root):
        raise PathOutside(f"{name} is outside {root}")
    return resolved


def is_plain_file_name(name: str) -> bool:
    """A bare file name: no separators, no parent references, not hidden, not empty."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(".") and "\x00" not in name
