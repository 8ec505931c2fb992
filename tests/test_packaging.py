"""Packaging: ``pip install .`` enables the Jupyter extension; editable checkouts need one command.

The wheel ships ``etc/jupyter/jupyter_server_config.d/scope.json`` as a data file, so a regular
install enables ``scope.server_ext`` in ``jupyter server``/``jupyter lab``. An editable install
cannot install data files, which is why ``daydream-scope enable-jupyter [PREFIX]`` exists.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from scope import __version__
from scope.server_ext import EXTENSION_CONFIG, EXTENSION_CONFIG_FILE
from tests._subprocess_server import ScopeServer, free_port, isolated_env, run_command

REPO = Path(__file__).resolve().parent.parent
REPO_CONFIG = REPO / "jupyter-config" / "jupyter_server_config.d" / EXTENSION_CONFIG_FILE
#: Source folder -> import package, as pyproject's package-dir maps them.
PACKAGE_DIRS = {"scope": "scope", "server_ext": "scope/server_ext", "widgets": "scope/widgets"}
#: Not part of the project's sources (build leftovers, caches, local environments).
COPY_IGNORE = shutil.ignore_patterns(
    ".git", "build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache", ".benchmarks", ".venv",
    "results", ".ipynb_checkpoints",
)
ANSI = re.compile(r"\x1b\[[0-9;]*m")
#: The page's entry points: ``/scope/`` (index.html) and the widget's view (``/scope/widget.js``).
PAGE_ENTRIES = ("index.html", "widget.js")
#: The widget's front end (``ScopeWidget._esm`` and ``_css``), which anywidget reads from the package.
WIDGET_FILES = ("scope_widget.js", "scope_widget.css")
#: Local files a page file loads: ``src=``/``href=`` in HTML, ``from "./x.js"`` in modules.
PAGE_REFERENCE = re.compile(r'(?:src|href)="([\w./-]+)"|from "\./([\w./-]+)"')


def needed_front_end_files() -> set[str]:
    """Wheel paths of the page's files (followed from its entry points) and the widget's JS and CSS."""
    page = REPO / "server_ext" / "static" / "page"
    found: set[str] = set()
    todo = list(PAGE_ENTRIES)
    while todo:
        name = todo.pop()
        if name in WIDGET_FILES or name.startswith(("../", "docs/")):
            continue  # the widget's stylesheet (served from scope/widgets), or a server route (/docs, the guides)
        if name not in found:
            found.add(name)
            todo += [a or b for a, b in PAGE_REFERENCE.findall((page / name).read_text())]
    assert {"page.js", "page-model.js", "api.js", "stream.js", "style.css"} <= found, found
    guides = {f"scope/docs/{path.name}" for path in (REPO / "docs").glob("*.md")}
    return {f"scope/server_ext/static/page/{name}" for name in found} | {f"scope/widgets/{name}" for name in WIDGET_FILES} | guides


def run(command: list[str], *, timeout: float, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd, stdin=subprocess.DEVNULL
    )
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def extension_sections(listing: str) -> dict[str, str]:
    """``jupyter server extension list`` output split into {config dir: its lines}."""
    sections: dict[str, str] = {}
    current = None
    for line in ANSI.sub("", listing).splitlines():
        if line.startswith("Config dir:"):
            current = line.split(":", 1)[1].strip()
            sections[current] = ""
        elif current is not None:
            sections[current] += line + "\n"
    return sections


def assert_enabled_and_ok(listing: str, config_dir: Path) -> None:
    sections = extension_sections(listing)
    assert str(config_dir) in sections, listing
    section = sections[str(config_dir)]
    assert re.search(r"^\s*scope\.server_ext\s+enabled\s*$", section, re.MULTILINE), listing
    assert re.search(r"^\s*scope\.server_ext\s.*\bOK\s*$", section, re.MULTILINE), listing


def start_jupyter_server(command: list[str], root: Path, env: dict[str, str]) -> ScopeServer:
    """Start a plain ``jupyter server`` (closed Scope API) on a free loopback port."""
    port = free_port()
    token = "packaging-test-token"
    output_path = root / f"jupyter-server-{port}.out"
    output_file = output_path.open("wb")
    process = subprocess.Popen(
        [*command, f"--port={port}", "--ServerApp.port_retries=0", "--ip=127.0.0.1", "--no-browser",
         "--allow-root", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}"],
        cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=output_file, stderr=subprocess.STDOUT,
    )
    server = ScopeServer(process, port, token, root, output_path, output_file)
    try:
        server.wait_ready(90)
    except BaseException:
        server.stop()
        raise
    return server


def assert_scope_served_behind_token(server: ScopeServer) -> None:
    with server.client() as client:
        authed = client.get("/health", headers={"Authorization": f"token {server.token}"})
        assert authed.status_code == 200, f"{authed.status_code} {authed.text}\n{server.output()}"
        assert authed.json()["status"] == "healthy"
        assert client.get("/health").status_code == 403  # closed by default under Jupyter


# -- (a) the wheel -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built_wheel(tmp_path_factory) -> tuple[Path, str]:
    """A wheel built offline from a copy of the sources made a git clone of its own (the
    checkout itself stays untouched), and the commit that copy is at."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "src"
    shutil.copytree(REPO, source, ignore=COPY_IGNORE)
    git = ["git", "-C", str(source), "-c", "user.name=Scope Tests", "-c", "user.email=tests@scope.invalid",
           "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null"]
    run([*git, "init", "-q"], timeout=60, cwd=work)
    run([*git, "add", "-A"], timeout=60, cwd=work)
    run([*git, "commit", "-q", "-m", "sources as tested"], timeout=60, cwd=work)
    commit = run([*git, "rev-parse", "--short=12", "HEAD"], timeout=60, cwd=work).stdout.strip()
    out = work / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-w", str(out), str(source)], timeout=180, cwd=work)
    (built,) = out.glob("daydream_scope-*.whl")
    return built, commit


@pytest.fixture(scope="module")
def wheel(built_wheel) -> Path:
    return built_wheel[0]


def test_wheel_records_the_commit_it_was_built_from(built_wheel):
    """``pip install .`` of a clone knows its commit: the build writes it into the package."""
    wheel, commit = built_wheel
    recorded = zipfile.ZipFile(wheel).read("scope/_build.py").decode()
    assert f"COMMIT = {commit!r}" in recorded, recorded
    assert not (REPO / "scope" / "_build.py").exists(), "the build wrote into the sources"


def test_wheel_contents(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    data_file = f"daydream_scope-{__version__}.data/data/etc/jupyter/jupyter_server_config.d/{EXTENSION_CONFIG_FILE}"
    assert data_file in names, sorted(names)
    assert json.loads(zipfile.ZipFile(wheel).read(data_file)) == EXTENSION_CONFIG
    # What the page and the widget load is in the wheel (not merely "whatever the sources hold").
    needed = needed_front_end_files()
    assert not needed - names, f"the page or the widget needs these, not in the wheel: {sorted(needed - names)}"
    # Every source file of the three packages ships, static page files included.
    missing = []
    for folder, package in PACKAGE_DIRS.items():
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix in (".pyc", ".pyo"):
                continue
            name = f"{package}/{path.relative_to(REPO / folder).as_posix()}"
            if name not in names:
                missing.append(name)
    assert not missing, f"not in the wheel: {missing}"
    entry_points = zipfile.ZipFile(wheel).read(f"daydream_scope-{__version__}.dist-info/entry_points.txt").decode()
    assert "daydream-scope = scope.cli:main" in entry_points
    assert "download_models = scope.cli:download_models_main" in entry_points


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_installed_wheel_enables_the_extension(wheel, built_wheel, tmp_path):
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], timeout=60, cwd=tmp_path)
    python = venv / "bin" / "python"
    # pip comes from the base environment's site-packages and installs into the venv.
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
         "--disable-pip-version-check", str(wheel)], timeout=120, cwd=tmp_path)
    assert (venv / "etc" / "jupyter" / "jupyter_server_config.d" / EXTENSION_CONFIG_FILE).is_file()
    assert (venv / "bin" / "daydream-scope").is_file()
    version = run([str(venv / "bin" / "daydream-scope"), "--version"], timeout=60, cwd=tmp_path,
                  env=isolated_env(tmp_path / "home"))
    assert version.stdout == f"daydream-scope {__version__} (commit {built_wheel[1]})\n", version.stdout

    env = isolated_env(tmp_path / "home")
    where = run([str(python), "-c", "import scope.server_ext as m; print(m.__file__)"], timeout=60, env=env, cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(venv), "the venv imports the checkout, not the wheel"

    # `jupyter server extension list`, run by the venv's interpreter (the base environment's
    # `jupyter` launcher would run its own interpreter and read the base prefix instead).
    listing = run([str(python), "-m", "jupyter_server.extension.serverextension", "list"], timeout=60, env=env, cwd=tmp_path)
    assert_enabled_and_ok(listing.stdout + listing.stderr, venv / "etc" / "jupyter")

    # And a plain `jupyter server` from the venv really serves the Scope API (behind the token).
    root = tmp_path / "served"
    root.mkdir()
    server = start_jupyter_server([str(python), "-m", "jupyter_server"], root, env)
    try:
        assert_scope_served_behind_token(server)
    finally:
        server.stop()


# -- (b) the editable flow's extra step ---------------------------------------------------------


def test_enable_jupyter_writes_the_extension_config(tmp_path):
    prefix = tmp_path / "prefix"
    result = run_command("daydream-scope", "enable-jupyter", str(prefix), root=tmp_path / "home", timeout=60)
    assert result.returncode == 0, result.stderr
    written = prefix / "etc" / "jupyter" / "jupyter_server_config.d" / EXTENSION_CONFIG_FILE
    assert written.is_file(), result.stdout
    assert str(written) in result.stdout
    assert json.loads(written.read_text()) == EXTENSION_CONFIG == json.loads(REPO_CONFIG.read_text())
    # Running it again is harmless.
    again = run_command("daydream-scope", "enable-jupyter", str(prefix), root=tmp_path / "home", timeout=60)
    assert again.returncode == 0 and json.loads(written.read_text()) == EXTENSION_CONFIG

    env = isolated_env(tmp_path / "home", {"JUPYTER_CONFIG_DIR": str(prefix / "etc" / "jupyter")})
    jupyter = Path(sys.executable).parent / "jupyter"
    command = [str(jupyter)] if jupyter.exists() else [sys.executable, "-m", "jupyter"]
    listing = run([*command, "server", "extension", "list"], timeout=60, env=env, cwd=tmp_path)
    assert_enabled_and_ok(listing.stdout + listing.stderr, prefix / "etc" / "jupyter")


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_config_path_from_enable_jupyter_loads_the_extension(tmp_path):
    """``JUPYTER_CONFIG_PATH=<prefix>/etc/jupyter jupyter server`` serves Scope."""
    prefix = tmp_path / "prefix"
    assert run_command("daydream-scope", "enable-jupyter", str(prefix), root=tmp_path / "home").returncode == 0
    env = isolated_env(tmp_path / "home", {"JUPYTER_CONFIG_PATH": str(prefix / "etc" / "jupyter")})
    root = tmp_path / "served"
    root.mkdir()
    server = start_jupyter_server([sys.executable, "-m", "jupyter_server"], root, env)
    try:
        assert_scope_served_behind_token(server)
    finally:
        server.stop()


# -- (c) conda environment file -------------------------------------------------------------------


def test_environment_yml_installs_the_checkout():
    import yaml

    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert isinstance(env, dict) and env.get("name")
    deps = env["dependencies"]
    assert any(isinstance(d, str) and re.match(r"python\s*[=<>]*\s*3\.1[1-9]", d) for d in deps), deps
    assert "pip" in deps
    pip_sections = [d["pip"] for d in deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, deps
    assert any(re.fullmatch(r"(-e\s+)?\.(\[[\w,\s-]+\])?", item.strip()) for item in pip_sections[0]), pip_sections
