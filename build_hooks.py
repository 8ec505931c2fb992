"""A setuptools build step: record the git commit the package is built from.

``build_py`` writes ``scope/_build.py`` into the build (not the source tree) with the commit of
the checkout being built, or None when it is not a git checkout (an sdist, a copied tree).
Editable installs skip it: they import the source tree, whose commit is asked of git at run time.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
GENERATED = "scope/_build.py"


def _git_commit(root: Path) -> str | None:
    # The package's own lookup, loaded by path: the package cannot be imported while it builds.
    spec = importlib.util.spec_from_file_location("_scope_build_info", ROOT / "scope" / "build_info.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.git_commit(root)


class BuildPy(build_py):
    """``build_py`` that also writes ``scope/_build.py``."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / GENERATED
        target.parent.mkdir(parents=True, exist_ok=True)
        commit = _git_commit(ROOT)
        target.write_text(
            '"""Written when the package was built (see build_hooks.py); not in git."""\n\n'
            f"COMMIT = {commit!r}\n"
        )
