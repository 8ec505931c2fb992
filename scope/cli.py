"""Console scripts: ``daydream-scope`` (the server) and ``download_models``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

USAGE_EXTRA = """
Commands:
  pipelines         List the pipeline ids this server can load.
  enable-jupyter    Enable the extension for jupyter lab (needed after pip install -e .).
  render TIMELINE.json -o OUT.mp4 [--models-dir DIR] [--synthetic] [--check] [-q]
                    Render a timeline headlessly (exit 1: --check found a differing chunk,
                    2: invalid timeline or missing files); render --schema prints its JSON Schema.

Scope options (also settable as ScopeApp.<name>, see docs/configuration.md):
  --host HOST       Host to bind to (default: 0.0.0.0)
  --port PORT       Port to bind to (default: 8000)
  --allow-origin ORIGIN
                    A web page origin that may call the API besides local ones (repeatable)
  --reload          Restart when Python files change
  --workers DEVICES The devices to run pipelines on, one worker each (default: auto, every GPU)
  --ray-address ADDRESS
                    Run the workers as actors of a Ray cluster ('auto', or HOST:PORT of its head)
  --synthetic       Write synthetic weights for pipelines whose files are missing, on load
  -N, --no-browser  Don't open a browser
  --version         Show the version (and the git commit it was built from) and exit
"""


def list_pipelines() -> int:
    from scope.pipelines.registry import pipeline_ids

    ids = pipeline_ids()
    print(f"{len(ids)} pipeline(s) available:")
    for pipeline_id in ids:
        print(f"  - {pipeline_id}")
    return 0


def enable_jupyter(prefix: str | None = None) -> int:
    """Write the config file that enables the extension under ``jupyter lab``/``jupyter server``.

    ``pip install .`` installs this file itself; an editable install (``pip install -e .``)
    cannot, so development checkouts run ``daydream-scope enable-jupyter`` once.
    """
    from scope.server_ext import EXTENSION_CONFIG, EXTENSION_CONFIG_FILE

    target = Path(prefix or sys.prefix) / "etc" / "jupyter" / "jupyter_server_config.d" / EXTENSION_CONFIG_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(EXTENSION_CONFIG, indent=2) + "\n")
    print(f"Enabled the Scope server extension: {target}")
    return 0


def main(argv: list[str] | None = None) -> None:
    """Run the Scope server (the standalone Jupyter server with the Scope extension)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["pipelines"]:
        raise SystemExit(list_pipelines())
    if args[:1] == ["render"]:
        from scope.recording.cli import render_main

        raise SystemExit(render_main(args[1:]))
    if args[:1] == ["enable-jupyter"]:
        raise SystemExit(enable_jupyter(args[1] if len(args) > 1 else None))
    if "--version" in args or "-V" in args:
        from scope.build_info import version_line

        print(version_line())
        raise SystemExit(0)
    if "-h" in args or "--help" in args:
        print(USAGE_EXTRA)
    from scope.server_ext.application import ScopeApp

    ScopeApp.launch_instance(argv=["--ScopeApp.standalone=True", *args])


def download_models_main(argv: list[str] | None = None) -> None:
    from scope.models.cli import download_models_main as run

    raise SystemExit(run(argv))
