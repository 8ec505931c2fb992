"""Client-named paths, kept inside their directory."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

#: The longest file or folder name (in bytes, as the file system stores it) Linux and macOS allow.
MAX_NAME_BYTES = 255


class PathOutside(ValueError):
    """A client path that resolves outside its allowed directory."""


class InvalidPath(ValueError):
    """A client path no file system can hold: a NUL byte or a component over 255 bytes."""


def check_path_name(name: str | Path) -> None:
    """Raise ``InvalidPath`` for a NUL byte or a component longer than ``MAX_NAME_BYTES``.

    Checked before the file system sees the path, which would answer with ``ValueError`` or
    ``ENAMETOOLONG`` instead.
    """
    text = os.fspath(name)
    if "\x00" in text:
        raise InvalidPath("the path contains a NUL byte")
    for part in Path(text).parts:
        if len(os.fsencode(part)) > MAX_NAME_BYTES:
            raise InvalidPath(f"a path component is longer than {MAX_NAME_BYTES} bytes")


def resolve_inside(base: Path, name: str | Path) -> Path:
    """Resolve ``name`` (absolute, or relative to ``base``) and insist it stays inside ``base``.

    Containment is checked on resolved paths (symlinks and ``..`` followed), component by
    component, so a sibling such as ``assets2`` never passes for ``assets``. A name no file
    system can hold raises ``InvalidPath``; so does one whose symlinks loop.
    """
    check_path_name(name)
    root = base.resolve()
    candidate = Path(name)
    try:
        resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, a path too long in total
        raise InvalidPath(f"the path cannot be resolved: {exc.__class__.__name__}") from None
    if resolved != root and not resolved.is_relative_to(root):
        raise PathOutside(f"{name} is outside {root}")
    return resolved


def is_plain_file_name(name: str) -> bool:
    """A bare file name: no separators, no parent references, not hidden, not empty."""
    return bool(name) and "/" not in name and "\\" not in name and name not in (".", "..") and not name.startswith(".") and "\x00" not in name


def file_name_problem(name: str) -> str | None:
    """Why ``name`` cannot be an uploaded file's name, or None when it can.

    Beyond ``is_plain_file_name``: at most ``MAX_NAME_BYTES`` bytes in UTF-8, and no control
    characters (CR, LF, NUL, the rest of the C0 and C1 sets, DEL), which would corrupt logs,
    headers and listings.
    """
    if any(unicodedata.category(char) == "Cc" for char in name):
        return "it contains control characters (such as CR, LF or NUL)"
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        return f"it is longer than {MAX_NAME_BYTES} bytes in UTF-8"
    if not is_plain_file_name(name):
        return "give a bare name without folders, '..' or a leading dot"
    return None
