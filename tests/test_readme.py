"""The README's instructions hold: one torch pin everywhere, ``environment.yml`` installs what
the README's commands need, and the "In a notebook" snippet runs pasted into one cell.

Conda is not available to the tests, so ``environment.yml`` is checked statically.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
from pathlib import Path

import nbformat
import pytest
import torch
import yaml
from nbclient import NotebookClient

from tests._subprocess_server import free_port, isolated_env
from tests.polling import wait_until_sync

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: The README's CPU-index install line, as pytorch.org's instructions give it (``.../whl/cpu``).
CPU_INDEX_COMMAND = re.compile(r"^pip install torch==2\.13\.0 --index-url https://\S+/whl/cpu$")


def section(title: str) -> str:
    """The README's text under ``## title``, up to the next section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.M | re.S)
    assert match, f"no '## {title}' section in the README"
    return match.group(1)


def code_blocks(text: str, language: str) -> list[str]:
    """Fenced blocks of ``language``, list-item indentation removed."""
    blocks = re.findall(rf"^([ \t]*)```{language}\n(.*?)^[ \t]*```", text, re.M | re.S)
    return [re.sub(rf"^{indent}", "", body, flags=re.M) for indent, body in blocks]


def pip_list(environment: dict) -> list[str]:
    [pip] = [d["pip"] for d in environment["dependencies"] if isinstance(d, dict) and "pip" in d]
    return pip


def test_one_torch_pin_matches_the_installed_torch():
    ci = (ROOT / ".ci" / "run").read_text()
    pins = set(re.findall(r"torch==([\w.+]+)", README + ci))
    assert pins == {torch.__version__.split("+")[0]}, pins


def test_readme_names_the_cpu_index_as_pytorch_documents_it():
    commands = [line for block in code_blocks(README, "bash") for line in block.splitlines()]
    assert [c for c in commands if CPU_INDEX_COMMAND.match(c)], commands
    # The two commands that must work as they are on a machine with a local CPU wheel.
    assert "pip install torch==2.13.0 . && daydream-scope --synthetic" in commands
    assert "bash .ci/run" in commands


def test_environment_yml_installs_what_the_readme_needs():
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())
    first_line = (ROOT / "environment.yml").read_text().splitlines()[0]
    assert first_line == (
        f"# conda env create -f environment.yml && conda activate {environment['name']} && daydream-scope --synthetic"
    )
    assert "python=3.11" in environment["dependencies"]
    # torch's CPU build from conda-forge, at least the version the package needs; pip then finds
    # torch installed and pulls no CUDA build.
    pyproject = (ROOT / "pyproject.toml").read_text()
    [needed] = re.findall(r'"torch(>=[\d.]+)"', pyproject)
    assert f"pytorch-cpu{needed}" in environment["dependencies"], environment["dependencies"]
    assert environment["channels"] == ["conda-forge"]
    pip = pip_list(environment)
    assert not [line for line in pip if "torch" in line or "index-url" in line], pip
    # The package with the extras the README's notebook command installs.
    [notebook_command] = code_blocks(section("In a notebook"), "bash")
    extras = re.search(r'"(\.\[[a-z,]+\])"', notebook_command).group(1)
    assert extras in pip, (extras, pip)


def test_notebook_command_says_how_to_run_as_root():
    assert "jupyter lab --allow-root notebooks/" in section("In a notebook")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_notebook_snippet_runs_pasted_into_one_cell(tmp_path, synthetic_models):
    """The snippet, as one cell, in a fresh kernel; ``scope.serve()`` starts its own server.

    The widget has no browser here (its front end is checked by the Lab tests), so this proves
    the Python side: the names exist, the calls are valid, and the client reads frames of the
    size the widget asked for, with no load conflict.
    """
    [snippet] = code_blocks(section("In a notebook"), "python")
    shutil.copytree(synthetic_models, tmp_path / "models")
    port = free_port()
    env = isolated_env(tmp_path, {"DAYDREAM_SCOPE_URL": f"http://127.0.0.1:{port}/", "IPYTHONDIR": str(tmp_path / "ipython")})
    readback = "import json\nprint(json.dumps({'shape': frames.shape, 'dtype': str(frames.dtype), 'load': w.load_params, 'url': url}))"
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(snippet), nbformat.v4.new_code_cell(readback)])
    work = tmp_path / "work"
    work.mkdir()
    try:
        NotebookClient(notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}).execute(env=env)
    finally:
        wait_until_sync(lambda: not _listening(port), 30, f"the server on port {port} to stop with the kernel")
    outputs = notebook.cells[0].outputs
    assert [o for o in outputs if o.output_type == "error"] == []
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in outputs), outputs
    [line] = "".join(o.text for o in notebook.cells[1].outputs if o.output_type == "stream").splitlines()
    result = json.loads(line)
    assert result == {"shape": [24, 160, 288, 3], "dtype": "uint8", "load": {"height": 160, "width": 288}, "url": f"http://127.0.0.1:{port}/"}


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
