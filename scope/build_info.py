"""Which commit this installation came from, for ``daydream-scope --version`` and the banner.

A wheel built from a git checkout records the commit in ``scope/_build.py`` (written by
``build_hooks.BuildPy``, never committed), so ``pip install .`` of a clone knows it. A source
tree or an editable install has no such module and asks git about the checkout it lives in.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

#: The checkout root when this package is imported from a source tree (``<root>/scope``).
SOURCE_ROOT = Path(__file__).resolve().parent.parent


def git_commit(root: Path) -> str | None:
    """The commit checked out at ``root`` (short hash), or None if ``root`` is no git checkout.

    Only ``root`` itself counts: a package installed somewhere inside another repository must
    not report that repository's commit.
    """
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
            capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def commit() -> str | None:
    """The commit recorded when this package was built, else the source checkout's."""
    try:
        from scope._build import COMMIT  # type: ignore[import-not-found]
    except ImportError:
        return git_commit(SOURCE_ROOT)
    return COMMIT


def version_line() -> str:
    """``daydream-scope 0.1.0 (commit 0123abcd4567)``; without a known commit, no parenthesis."""
    from scope import __version__

    found = commit()
    return f"daydream-scope {__version__}" + (f" (commit {found})" if found else "")
