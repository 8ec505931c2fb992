"""The research notebooks, executed top to bottom in a fresh kernel, their outputs checked.

Each notebook runs in an isolated environment (its own models, assets, LoRA and logs
directories; the models directory a copy of the suite's synthetic weights) with
``DAYDREAM_SCOPE_URL`` pointing at a free loopback port, so ``scope.serve()`` in the notebook
has to start its own ``daydream-scope`` there. The tests read what the notebook shows a reader
(its printed text, images, widget outputs) and, for the measured numbers, the kernel's variables:
a cell the test appends evaluates them in the same kernel after the notebook's own cells (and is
removed again), so the notebooks carry no output that exists only for the tests. What a widget's
view reports (status, fps, chunk) needs a browser: the Lab test checks it (``test_widget_lab.py``).
After the kernel is gone, the server it started must be gone too.
"""

from __future__ import annotations

import json
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import psutil
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from tests._subprocess_server import free_port, isolated_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
ALL = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))

#: Per-cell limit: generous, the longest cells stream for a few seconds.
CELL_TIMEOUT = 300


#: Evaluates the test's expressions in the notebook's kernel and prints them as one JSON line.
READ_CELL = """import json as _json
print(_json.dumps({{{items}}}, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))"""


@dataclass
class Executed:
    """An executed notebook and the kernel's values of the expressions the test asked for."""

    notebook: Any
    values: dict[str, Any]
    port: int
    root: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def code_cells(self) -> list[Any]:
        return [cell for cell in self.notebook.cells if cell.cell_type == "code"]

    def cell_with(self, text: str) -> Any:
        """The first code cell whose source contains ``text``."""
        for cell in self.code_cells():
            if text in cell.source:
                return cell
        raise AssertionError(f"no code cell contains {text!r}")

    def stdout(self, cell: Any) -> str:
        return "".join(o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout")

    def errors(self, cell: Any) -> list[Any]:
        return [o for o in cell.outputs if o.output_type == "error"]

    def outputs_of(self, cell: Any, mime: str) -> list[Any]:
        return [
            o.data[mime]
            for o in cell.outputs
            if o.output_type in ("display_data", "execute_result") and mime in o.get("data", {})
        ]

    def widget_states(self) -> list[dict[str, Any]]:
        """Synced states of the ScopeWidgets, as the kernel sent them over the widget comm."""
        stored = self.notebook.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {})
        return [model["state"] for model in stored.get("state", {}).values() if "prompts" in model["state"]]

    def images(self, cell: Any | None = None) -> int:
        """PNG images displayed by ``cell`` (or by the whole notebook)."""
        cells = [cell] if cell is not None else self.code_cells()
        return sum(
            1
            for c in cells
            for o in c.outputs
            if o.output_type in ("display_data", "execute_result") and "image/png" in o.get("data", {})
        )


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _listeners(port: int) -> list[psutil.Process]:
    found = []
    try:
        connections = psutil.net_connections(kind="tcp")
    except psutil.AccessDenied:
        return found
    for conn in connections:
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            try:
                found.append(psutil.Process(conn.pid))
            except psutil.NoSuchProcess:
                pass
    return found


def _server_gone(port: int, timeout: float = 30.0) -> None:
    """Wait for the port to close; kill whatever still listens there and fail if it stays open."""
    deadline = time.monotonic() + timeout
    while _port_open(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not _port_open(port):
        return
    leftovers = _listeners(port)
    for process in leftovers:
        process.kill()
    psutil.wait_procs(leftovers, timeout=10)
    raise AssertionError(
        f"the server on port {port} outlived the notebook's kernel: "
        + ", ".join(f"pid {p.pid}" for p in leftovers)
    )


def settings_cell(notebook: Any) -> tuple[int, dict[str, Any]]:
    """The index of the notebook's one cell tagged ``parameters`` and the values it assigns."""
    tagged = [i for i, cell in enumerate(notebook.cells) if "parameters" in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, "one cell must be tagged 'parameters'"
    settings: dict[str, Any] = {}
    exec(notebook.cells[tagged[0]].source, settings)
    return tagged[0], settings


def with_parameters(notebook: Any, parameters: dict[str, Any]) -> None:
    """Override a notebook's settings the way papermill does: a cell assigning ``parameters``
    right after the cell tagged ``parameters`` (which must assign each of them already)."""
    index, settings = settings_cell(notebook)
    assert set(parameters) <= set(settings), f"not set in the parameters cell: {set(parameters) - set(settings)}"
    source = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    injected = nbformat.v4.new_code_cell(source, metadata={"tags": ["injected-parameters"]})
    notebook.cells.insert(index + 1, injected)


def execute(
    name: str, root: Path, models: Path, read: dict[str, str], parameters: dict[str, Any] | None = None
) -> Executed:
    """Run ``notebooks/<name>`` in a fresh kernel below ``root`` (with ``parameters`` overriding its
    settings), then evaluate ``read``'s expressions (name: Python expression) in that kernel;
    returns the notebook and the values."""
    work = root / "work"
    work.mkdir(parents=True)
    shutil.copytree(models, root / "models")
    port = free_port()
    env = isolated_env(
        root,
        {
            "DAYDREAM_SCOPE_URL": f"http://127.0.0.1:{port}/",
            "MPLBACKEND": "module://matplotlib_inline.backend_inline",
            "MPLCONFIGDIR": str(root / "matplotlib"),
            "IPYTHONDIR": str(root / "ipython"),
        },
    )
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    if parameters:
        with_parameters(notebook, parameters)
    items = ", ".join(f"{key!r}: ({expression})" for key, expression in read.items())
    notebook.cells.append(nbformat.v4.new_code_cell(READ_CELL.format(items=items)))
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    try:
        client.execute(env=env)
    except CellExecutionError as exc:
        log = root / "logs" / f"daydream-scope-{port}.out"
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no server log)"
        raise AssertionError(f"{name} failed:\n{exc}\n--- the server's log, last lines ---\n{tail}") from None
    finally:
        _server_gone(port)
    reading = notebook.cells.pop()
    printed = [o.text for o in reading.outputs if o.output_type == "stream" and o.name == "stdout"]
    assert printed, f"the kernel's values were not read: {reading.outputs}"
    # The kernel may send one printed line in several stream messages (its flush timer).
    return Executed(notebook, json.loads("".join(printed).strip().splitlines()[-1]), port, root)


def started_its_own_server(run: Executed) -> None:
    """``scope.serve()`` found nothing at the URL and started ``daydream-scope`` there (its log)."""
    log = run.root / "logs" / f"daydream-scope-{run.port}.out"
    assert log.exists(), f"no server log at {log}: scope.serve() did not start a server"
    assert f"{run.port}" in log.read_text(errors="replace")


# Stored form ------------------------------------------------------------------------------


def test_notebooks_are_stored_clean():
    """Ten notebooks, valid nbformat v4, no outputs or execution counts, the python3 kernel."""
    assert ALL == [
        "01_quick_start.ipynb",
        "02_parameters_and_transitions.ipynb",
        "03_video_to_video.ipynb",
        "04_recording_and_measuring.ipynb",
        "05_in_kernel_api.ipynb",
        "06_comparing_longlive_siblings.ipynb",
        "07_streamdiffusionv2.ipynb",
        "08_user_loras.ipynb",
        "09_vace.ipynb",
        "10_recording_and_rendering.ipynb",
    ]
    for name in ALL:
        notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(notebook)
        assert notebook.nbformat == 4
        assert notebook.metadata["kernelspec"]["name"] == "python3"
        assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, f"{name}: stored outputs"


# 05: the in-kernel API ------------------------------------------------------------------


def test_in_kernel_api(tmp_path, synthetic_models):
    run = execute("05_in_kernel_api.ipynb", tmp_path, synthetic_models, {
        "first": "first.frames.shape", "second": "second.frames.shape", "dtype": "first.frames.dtype",
        "min_step": "min(steps)",
        "identical": "identical", "interleaved": "interleaved", "max_diff": "max(mad(x, y) for x, y in zip(a, b))",
        "changes": "changes",
        "active": "active", "to_a": "to_a", "to_b": "to_b",
        "timing_chunks": "len(rows)", "timing_keys": "sorted(rows[0])",
        "refused": "refused", "next_frames": "after.frames.shape",
    })
    v = run.values
    assert not list((tmp_path / "logs").glob("daydream-scope-*.out")), "the in-kernel API needs no server"

    assert v["first"] == [9, 96, 160, 3] and v["second"] == [12, 96, 160, 3]
    assert v["dtype"] == "uint8"
    assert v["min_step"] > 1, "consecutive frames should differ"
    assert "first chunk:  (9, 96, 160, 3) uint8" in run.stdout(run.cell_with("second = stream.generate()"))

    assert v["identical"] is True and v["interleaved"] is True
    assert v["max_diff"] == 0
    assert "interleaved        -> identical: True" in run.stdout(run.cell_with("interleaved ="))

    changes = v["changes"]
    assert changes["nothing changed"]["diff"] == 0
    # A new prompt moves the picture by at least a third of what a restart (a fresh sample) does
    # (measured 33.6 against 50.5 levels; with cross-attention weakened tenfold, 9.7 against 56.7).
    assert changes["new prompt"]["diff"] > changes["steps [1000, 500]"]["diff"] / 3, changes
    assert changes["steps [1000, 500]"] == {**changes["steps [1000, 500]"], "frames": 9, "cache_reset": True}
    assert changes["steps [1000, 500]"]["diff"] > 1
    assert changes["steps, manage_cache=False"]["frames"] == 12
    assert changes["steps, manage_cache=False"]["cache_reset"] is False
    assert changes["steps, manage_cache=False"]["diff"] > 1

    active, to_a, to_b = v["active"], v["to_a"], v["to_b"]
    assert active[:3] == [False] * 3 and active[3] is True and active[-1] is False
    assert to_a[:3] == [0, 0, 0], "before the transition the stream is the A-only stream"
    assert to_a[-1] > 5 * max(to_a[3], 1), "the stream moves away from A"
    assert to_b[-1] < to_b[2] / 4, "and ends close to the stream that had B all along"
    assert run.images(run.cell_with("axvspan")) == 1

    assert v["timing_chunks"] == 6
    assert {"text_ms", "dit_ms", "vae_ms", "total_ms"} <= set(v["timing_keys"])

    assert v["refused"] == ["noise_scale", "denoising_step_list", "promt"]
    assert v["next_frames"][0] == 12
    assert "the stream goes on: (12, 96, 160, 3)" in run.stdout(run.cell_with("ParameterErrors"))

    assert "embedding == its text: True" in run.stdout(run.cell_with("prompt_embeds"))
    assert "unloaded" in run.stdout(run.cell_with("pipeline.unload()"))
    assert run.images() >= 2


# 06: comparing LongLive's siblings ------------------------------------------------------

SIBLINGS = "06_comparing_longlive_siblings.ipynb"
#: A short run for the suite; the switch comes once the window (4 chunks) holds only prompt A.
SHORT = {"CHUNKS": 8, "SWITCH_AT": 5, "AFTER_SWITCH": 3}
VARIANTS = ["longlive", "reward-forcing", "memflow", "memflow, memory_bank=False"]


def test_siblings_notebook_defaults_to_a_long_run():
    """Stored, the notebook runs a few hundred chunks, short of the restart at latent frame 1021."""
    _, settings = settings_cell(nbformat.read(NOTEBOOKS / SIBLINGS, as_version=4))
    assert 200 <= settings["CHUNKS"] <= 341
    assert settings["SYNTHETIC"] is True and settings["PROMPT_A"] != settings["PROMPT_B"]


def test_comparing_longlive_siblings(tmp_path, synthetic_models):
    run = execute(SIBLINGS, tmp_path, synthetic_models, {
        "labels": "list(results)", "drift": "drift", "restarts": "restarts",
        "from_a": "from_a", "to_b": "to_b", "recached": "recached", "response": "response",
        "bank_effect": "bank_effect", "timing": "timing",
        "long_frames": "{k: r['long']['last'].shape for k, r in results.items()}",
    }, parameters=SHORT)
    v = run.values
    chunks, switch = SHORT["CHUNKS"], SHORT["SWITCH_AT"]
    assert not list((tmp_path / "logs").glob("daydream-scope-*.out")), "the in-kernel API needs no server"
    assert v["labels"] == VARIANTS
    # Missing sibling weights were written synthetic into the kernel's models directory.
    assert (tmp_path / "models" / "Reward-Forcing-T2V-1.3B" / "rewardforcing.pt").exists()

    for label in VARIANTS:
        # One drift value per chunk of the long run (the injected count), 0 only at the start.
        drift = v["drift"][label]
        assert len(drift) == chunks and drift[0] == 0 and min(drift[1:]) > 1, (label, drift)
        assert v["long_frames"][label] == [chunks, 64, 96, 3]
        assert v["restarts"][label] == []

        # Before the switch the switch run is the A-only stream; the switch shows on its chunk.
        from_a, to_b = v["from_a"][label], v["to_b"][label]
        assert len(from_a) == len(to_b) == switch + SHORT["AFTER_SWITCH"]
        assert from_a[:switch] == [0] * switch, (label, from_a)
        assert from_a[switch] > 3, (label, from_a)
        # ... and the stream ends close to the one that had prompt B all along.
        assert to_b[-1] < to_b[switch - 1] / 4, (label, to_b)
        assert v["response"][label]["at_switch"] == round(from_a[switch], 2)
        assert v["response"][label]["settled_after"] is not None

        assert {"text_ms", "dit_ms", "vae_ms"} == set(v["timing"][label])

    # LongLive and MemFlow re-cache at the switch; Reward Forcing only swaps the text.
    assert v["recached"] == {"longlive": [switch], "reward-forcing": [],
                             "memflow": [switch], "memflow, memory_bank=False": [switch]}
    # The bank is empty for the first chunk and attended to from the second on.
    bank = v["bank_effect"]
    assert len(bank) == chunks and bank[0] == 0 and min(bank[1:]) > 0, bank

    printed = run.stdout(run.cell_with("settled(to_b[label])"))
    assert all(label in printed for label in VARIANTS)
    assert "never" in printed.splitlines()[2], "reward-forcing's row: no re-cache"
    for text in ("distance to the first chunk", "axvline(SWITCH_AT", "imshow", "DiT ms per chunk"):
        assert run.images(run.cell_with(text)) == 1, text


# 07: StreamDiffusionV2, video to video in the kernel -------------------------------------

V2V = "07_streamdiffusionv2.ipynb"
#: The suite's run: a third of the clip (its motion still rises and falls back).
V2V_SHORT = {"CHUNKS": 8}


def test_streamdiffusionv2_notebook_defaults():
    _, settings = settings_cell(nbformat.read(NOTEBOOKS / V2V, as_version=4))
    assert settings["CHUNKS"] == 24 and settings["SYNTHETIC"] is True
    assert (settings["HEIGHT"], settings["WIDTH"]) == (64, 64)
    assert settings["NOISE_SCALES"] == sorted(settings["NOISE_SCALES"]) and settings["NOISE_SCALES"][-1] == 1.0


def test_streamdiffusionv2_video_to_video(tmp_path, synthetic_models):
    run = execute(V2V, tmp_path, synthetic_models, {
        "synthetic": "pipeline.synthetic", "clip": "clip.shape", "shapes": "shapes", "frames": "output.shape",
        "trace": "trace", "motion": "motion", "formula_error": "formula_error", "correlation": "correlation",
        "dependence": "{str(k): v for k, v in dependence.items()}",
        "sweep": "{str(k): v.shape for k, v in sweep.items()}",
    }, parameters=V2V_SHORT)
    v = run.values
    chunks = V2V_SHORT["CHUNKS"]
    assert not list((tmp_path / "logs").glob("daydream-scope-*.out")), "the in-kernel API needs no server"
    assert v["synthetic"] is True
    assert "synthetic weights" in run.stdout(run.cell_with("scope.load_pipeline("))

    # Four frames in per chunk; five out of the first chunk, four out of each other.
    assert v["clip"] == [4 * chunks, 64, 64, 3]
    assert v["shapes"] == [[5, 64, 64, 3]] + [[4, 64, 64, 3]] * (chunks - 1)
    assert v["frames"] == [4 * chunks + 1, 64, 64, 3]
    assert f"{4 * chunks + 1} frames from {4 * chunks}" in run.stdout(run.cell_with("stream.generate(frames"))

    # The sweep: every scale ran the whole clip; the input's share falls as the noise rises,
    # and at noise_scale 1 the input is gone entirely.
    assert list(v["sweep"].values()) == [[4 * chunks + 1, 64, 64, 3]] * 5
    dependence = [v["dependence"][str(s)] for s in (0.2, 0.4, 0.6, 0.8, 1.0)]
    assert all(a > b for a, b in zip(dependence, dependence[1:])), dependence
    assert dependence[0] > 5 and dependence[-1] == 0, dependence

    # The controller: one scale per chunk, the formula's exactly; the still ends get the most
    # noise, the fastest chunk the least.
    trace, motion = v["trace"], v["motion"]
    assert len(trace) == len(motion) == chunks
    assert v["formula_error"] < 1e-5
    assert all(0.61 - 1e-6 <= s <= 0.79 + 1e-6 for s in trace), trace
    fastest = motion.index(max(motion))
    assert 0 < fastest < chunks - 1, motion
    assert trace[fastest] < min(trace[0], trace[-1]) - 0.1, (trace, motion)
    assert v["correlation"] < -0.9, (trace, motion)

    assert run.images(run.cell_with("shown = np.linspace")) == 1
    assert run.images(run.cell_with("for scale in NOISE_SCALES")) == 1
    assert run.images(run.cell_with("twinx")) == 1
    printed = run.stdout(run.cell_with("for scale in NOISE_SCALES"))
    assert "noise_scale 0.2: first step 100" in printed and "noise_scale 1.0: first step 900" in printed
    assert "unloaded" in run.stdout(run.cell_with("pipeline.unload()"))


# 08: user LoRAs at runtime, their scales swept ----------------------------------------------

LORAS = "08_user_loras.ipynb"
#: The suite's run: two chunks per stream, a 3x3 grid.
LORAS_SHORT = {"CHUNKS": 2, "SCALES": [0.0, 1.0, 2.0]}


def test_user_loras_notebook_defaults():
    _, settings = settings_cell(nbformat.read(NOTEBOOKS / LORAS, as_version=4))
    assert settings["SYNTHETIC"] is True and settings["LORA_FILES"] is None
    assert (settings["HEIGHT"], settings["WIDTH"]) == (64, 64)
    assert 0.0 in settings["SCALES"] and len(settings["SCALES"]) >= 3


def test_user_loras_scales_swept(tmp_path, synthetic_models):
    run = execute(LORAS, tmp_path, synthetic_models, {
        "reference": "reference.shape", "zero_difference": "zero_difference",
        "away": "{f'{a:g},{b:g}': v for (a, b), v in away.items()}",
        "grid": "{f'{a:g},{b:g}': v.shape for (a, b), v in grid.items()}",
        "side_by_side": "side_by_side", "resets": "resets", "merged_difference": "merged_difference",
        "merged_away": "distance(merged_frames, reference)",
    }, parameters=LORAS_SHORT)
    v = run.values
    assert not list((tmp_path / "logs").glob("daydream-scope-*.out")), "the in-kernel API needs no server"
    assert "synthetic weights" in run.stdout(run.cell_with("plain = scope.load_pipeline("))

    # Both adapters loaded apart from the weights; at scale 0 they are exactly the plain pipeline.
    loaded = run.stdout(run.cell_with('lora_merge_mode="runtime_peft"'))
    assert "style_a: scale 0.0, runtime_peft" in loaded and "style_b: scale 0.0, runtime_peft" in loaded
    assert v["reference"] == [9 + 12, 64, 64, 3]
    assert v["zero_difference"] == 0
    assert "largest difference 0 grey levels over 21 frames" in loaded

    # The grid: every pair ran; (0, 0) is the plain pipeline, and each scale moves the output
    # further the larger it is, A's and B's alike.
    away = v["away"]
    assert set(v["grid"]) == {f"{a},{b}" for a in (0, 1, 2) for b in (0, 1, 2)}
    assert all(shape == [21, 64, 64, 3] for shape in v["grid"].values())
    assert away["0,0"] == 0
    assert 1 < away["1,0"] < away["2,0"] and 1 < away["0,1"] < away["0,2"], away
    assert away["1,1"] > max(away["1,0"], away["0,1"]) * 0.9, away
    assert run.images(run.cell_with("for a in SCALES for b in SCALES")) == 1
    assert "rows: A, columns: B" in run.stdout(run.cell_with("for a in SCALES for b in SCALES"))

    # Scales are per stream: interleaved streams equal runs alone; a change resets the caches.
    assert v["side_by_side"] == {"A 1": True, "B 1": True}
    assert v["resets"] == [True, False, True, False]

    # Merged at load equals the runtime adapter at the same scale, up to a grey level of rounding.
    assert v["merged_difference"] <= 1
    assert abs(v["merged_away"] - away["1,0"]) < 0.1
    assert "unloaded" in run.stdout(run.cell_with("merged.unload()"))


# 09: VACE, a reference image and a control video, the context scale swept -----------------

VACE = "09_vace.ipynb"
#: The suite's run: two chunks per stream (the one-shot check needs a second chunk).
VACE_SHORT = {"CHUNKS": 2}


def test_vace_notebook_defaults():
    _, settings = settings_cell(nbformat.read(NOTEBOOKS / VACE, as_version=4))
    assert settings["SYNTHETIC"] is True and settings["MODELS_DIR"] is None and settings["CHUNKS"] >= 2
    assert (settings["HEIGHT"], settings["WIDTH"]) == (64, 64)
    assert settings["SCALES"][0] == 0.0 and 1.0 in settings["SCALES"]
    assert settings["SCALES"] == sorted(settings["SCALES"]) and max(settings["SCALES"]) <= 2


def test_vace_reference_and_control_scale_swept(tmp_path, synthetic_models):
    run = execute(VACE, tmp_path, synthetic_models, {
        "synthetic": "pipeline.synthetic", "vace": "pipeline.load_params.vace_enabled",
        "clip": "clip.shape", "control_shapes": "[control_for(k).shape for k in range(CHUNKS)]",
        "reference": "Image.open(reference_image).size",
        "sweep": "{f'{s:g}': [c.shape for c in made] for s, made in sweep.items()}",
        "effect": "{f'{s:g}': v for s, v in effect.items()}", "zero_is_plain": "zero_is_plain",
        "once_vs_plain": "once_vs_plain", "again_vs_once": "again_vs_once",
        "kept": "int(keep_left.sum())", "halves": "halves", "masked": "masked.shape",
        "extended": "{k: v.shape for k, v in extended.items()}", "extension_away": "extension_away",
    }, parameters=VACE_SHORT)
    v = run.values
    chunks = VACE_SHORT["CHUNKS"]
    frames = [[9, 64, 64, 3]] + [[12, 64, 64, 3]] * (chunks - 1)
    assert not list((tmp_path / "logs").glob("daydream-scope-*.out")), "the in-kernel API needs no server"
    assert v["synthetic"] is True and v["vace"] is True
    assert "synthetic weights" in run.stdout(run.cell_with("vace_enabled=True"))

    # The inputs: a 96x72 picture; 13 control frames for the first chunk, 12 for each other.
    assert v["reference"] == [96, 72]
    assert v["clip"] == [13 + 12 * (chunks - 1), 64, 64, 3]
    assert v["control_shapes"] == [[13, 64, 64, 3]] + [[12, 64, 64, 3]] * (chunks - 1)
    assert run.images(run.cell_with("def control_video")) == 1

    # The sweep: scale 0 is the stream without VACE inputs, and the output moves further from
    # it the larger the scale (measured 4.7, 8.5, 11.5 grey levels at 0.5, 1, 1.5 with 3 chunks).
    assert v["sweep"] == {s: frames for s in ("0", "0.5", "1", "1.5")}
    assert v["zero_is_plain"] is True
    effect = [v["effect"][s] for s in ("0", "0.5", "1", "1.5")]
    assert effect[0] == 0 and 1 < effect[1] < effect[2] < effect[3], effect
    printed = run.stdout(run.cell_with("for scale in SCALES"))
    assert "scale 0 gives the frames of the stream without VACE inputs: True" in printed
    assert run.images(run.cell_with("for scale in SCALES")) == 1

    # One-shot references: the first chunk moves, later chunks follow only through the cache;
    # sending the reference again changes the chunk it comes with and nothing before it.
    once, again = v["once_vs_plain"], v["again_vs_once"]
    assert len(once) == len(again) == chunks
    assert once[0] > 2 and once[1] > 0.5, once
    assert again[0] == 0 and again[1] > 2, again

    # The mask keeps the left half; either half differs from the unmasked stream.
    assert v["kept"] == 64 * 32
    assert v["masked"] == [9 + 12 * (chunks - 1), 64, 64, 3]
    assert min(v["halves"].values()) > 0.2, v["halves"]

    # Extension: one chunk per variant, each away from the plain first chunk.
    assert v["extended"] == {name: [9, 64, 64, 3] for name in ("first", "last", "first + last")}
    assert min(v["extension_away"].values()) > 2, v["extension_away"]
    assert run.images(run.cell_with("first_frame_image")) == 1
    assert "unloaded" in run.stdout(run.cell_with("pipeline.unload()"))


# 01: quick start ------------------------------------------------------------------------


def test_quick_start(tmp_path, synthetic_models):
    run = execute("01_quick_start.ipynb", tmp_path, synthetic_models, {
        "prompts": "w.prompts", "server": "w.server", "pipeline_id": "w.pipeline_id",
        "shape": "frames.shape", "dtype": "frames.dtype", "mean_colour": "frames.mean(axis=(0, 1, 2))",
        "min_step": "steps.min()", "synthetic": "stats.synthetic if stats else None",
    })
    v = run.values
    started_its_own_server(run)

    assert run.outputs_of(run.cell_with("scope.serve()"), "text/plain") == [repr(run.url)]
    assert run.outputs_of(run.cell_with("ScopeWidget("), "application/vnd.jupyter.widget-view+json")

    blend = [{"text": "a red fox in the snow", "weight": 0.6}, {"text": "a neon city at night", "weight": 0.4}]
    assert v["prompts"] == blend
    assert v["server"] == run.url and v["pipeline_id"] == "longlive"
    # The assignment reached the widget's synced state (what a browser view would receive).
    states = run.widget_states()
    assert len(states) == 1 and states[0]["prompts"] == blend
    assert states[0]["load_params"] == {"height": 160, "width": 288} and states[0]["autostart"] is True

    # Headless, no view can report: the wait says so at once, and the notebook goes on.
    waited = run.cell_with("w.wait_for(")
    [error] = run.errors(waited)
    assert error.ename == "NoViewError", error
    assert "no front end shows widgets in this kernel" in error.evalue
    assert run.stdout(waited) == "", "nothing is read when nothing can be reported"

    assert v["shape"] == [24, 160, 288, 3] and v["dtype"] == "uint8"
    assert "frames: (24, 160, 288, 3) uint8" in run.stdout(run.cell_with("client.stream("))
    assert v["min_step"] > 1, "the stream's frames should change over time"
    assert all(20 < value < 235 for value in v["mean_colour"])
    assert v["synthetic"] is True
    assert run.images(run.cell_with("imshow")) == 1


# 02: parameters and transitions ---------------------------------------------------------


def test_parameters_and_transitions(tmp_path, synthetic_models):
    run = execute("02_parameters_and_transitions.ipynb", tmp_path, synthetic_models, {
        "floor": "floor", "a_to_b": "distance(base, only_b)", "shape": "base.shape",
        "rows": "rows", "effects": "effects", "cache": "cache",
        "held_tail": "held_steps[-12:]", "resumed_median": "np.median(resumed_steps)",
        "rejected": "rejected", "warning": "warning", "held_noise_scale": "held_parameters.get('noise_scale')",
        "transition_chunks": "chunks", "transition_prompts": "info.parameters['prompts']",
        "colour_before": "colour_before", "colour_after": "colour_after",
        "widget_prompts": "w.prompts", "paused": "w.paused", "steps": "w.denoising_step_list",
        "widget_error": "widget_error",
    })
    v = run.values
    started_its_own_server(run)

    assert v["shape"] == [9, 96, 160, 3]
    a_to_b = v["a_to_b"]
    assert a_to_b > 4 and a_to_b > 3 * v["floor"], "prompts A and B should differ beyond the codec noise"

    rows = {row["weight_b"]: row for row in v["rows"]}
    assert rows[0.25]["linear_to_a"] < rows[0.5]["linear_to_a"] < rows[0.75]["linear_to_a"]
    assert rows[0.25]["linear_to_b"] > rows[0.75]["linear_to_b"]
    assert rows[0.5]["linear_to_a"] > 2 and rows[0.5]["linear_to_b"] > 2, "a blend is neither prompt"
    assert run.images(run.cell_with("weight of B (linear blend)")) == 1

    effects = v["effects"]
    assert effects["denoising_step_list=[1000, 500]"] > a_to_b / 2
    assert effects["denoising_step_list=[1000]"] > a_to_b / 2
    assert effects["noise_scale=0.3 (text mode)"] < a_to_b / 3, "noise_scale acts in video mode only"
    assert effects["noise_controller=False (text mode)"] < a_to_b / 3

    cache = v["cache"]
    assert cache["after_reset"] < a_to_b / 3, "reset_cache restarts the stream: it replays its opening"
    assert cache["before_reset"] > a_to_b / 2
    assert cache["steps_managed"] < a_to_b / 3, "with manage_cache a new step list restarts the stream"
    assert cache["steps_unmanaged"] > a_to_b / 2, "without manage_cache it carries on"

    assert max(v["held_tail"]) < 1.5, "paused: the last frame repeats"
    assert v["resumed_median"] > 3, "resumed: frames change again"

    assert v["rejected"]["type"] == "parameters_rejected"
    assert v["rejected"]["errors"][0]["loc"] == ["noise_scale"]
    assert v["warning"] == {"type": "parameters_warning", "unknown_keys": ["promt"]}
    assert v["held_noise_scale"] is None, "a refused message changes nothing"

    assert v["transition_chunks"] >= 3, "a 4-step transition spans about four chunks"
    assert v["transition_prompts"] == [{"text": "a neon city at night", "weight": 1.0}]
    assert v["colour_after"][0] - v["colour_before"][0] > 5

    prompts = [{"text": "a neon city at night", "weight": 1.0}]
    assert v["widget_prompts"] == prompts
    assert v["paused"] is True and v["steps"] == [1000, 500]
    assert v["widget_error"].startswith("TraitError") and "noise_scale" in v["widget_error"]
    assert "TraitError" in run.stdout(run.cell_with("w.noise_scale = 2"))
    states = run.widget_states()
    assert len(states) == 1
    assert states[0]["paused"] is True and states[0]["prompts"] == prompts
    assert states[0]["_transition"]["num_steps"] == 8
    assert states[0]["_transition"]["target_prompts"] == prompts


# 03: video to video ---------------------------------------------------------------------


def test_video_to_video(tmp_path, synthetic_models):
    run = execute("03_video_to_video.ipynb", tmp_path, synthetic_models, {
        "mode": "info.input_mode", "shape": "output.shape", "noise_scale": "info.parameters.get('noise_scale')",
        "dependence": "{str(k): d for k, d in dependence.items()}", "controlled": "controlled",
        "passthrough_shape": "echoed.shape", "max_error": "max(errors)", "steps": "steps",
        "pattern_shape": "pattern.shape", "indices": "indices",
    })
    v = run.values
    started_its_own_server(run)

    assert (v["mode"], v["shape"], v["noise_scale"]) == ("video", [24, 96, 160, 3], 0.2)
    assert "session: video mode" in run.stdout(run.cell_with("noise_scale=0.2,"))

    dependence = {float(k): d for k, d in v["dependence"].items()}
    assert dependence[0.2] > 8, "at little noise the output depends on the input"
    assert dependence[0.2] > dependence[0.5] > dependence[0.8]
    assert dependence[1.0] < dependence[0.2] / 4, "at noise_scale 1 the input is gone"
    assert v["controlled"] < dependence[0.2] / 2, "the controller overrides a low noise_scale"

    assert v["passthrough_shape"] == [24, 96, 160, 3]
    assert v["max_error"] < 12, "passthrough returns its input (plus codec noise)"
    assert all(1 <= step <= 2 for step in v["steps"]), "in order"

    assert v["pattern_shape"] == [20, 240, 320, 3]
    indices = v["indices"]
    assert all(b > a for a, b in zip(indices, indices[1:])), indices
    assert f"stamped indices: {indices}" in run.stdout(run.cell_with("read_index"))
    assert run.images() >= 4


# 04: recording and measuring ------------------------------------------------------------


def test_recording_and_measuring(tmp_path, synthetic_models):
    run = execute("04_recording_and_measuring.ipynb", tmp_path, synthetic_models, {
        "frames": "info.frames", "width": "info.width", "height": "info.height", "fps": "info.fps",
        "events": "events",
        "file_shape": "frames.shape", "bytes": "path.stat().st_size",
        "red_before": "red_before", "red_after": "red_after", "moving": "moving", "frozen": "frozen",
    })
    v = run.values
    started_its_own_server(run)

    assert v["frames"] == 216 and (v["width"], v["height"]) == (160, 96)
    assert v["fps"] > 0
    assert v["events"]["transition"] >= 24 and v["events"]["pause"] >= 156

    written = tmp_path / "work" / "stream.mp4"
    assert written.exists()
    assert v["file_shape"][:3] == [216, 96, 160]
    assert v["bytes"] == written.stat().st_size
    assert "216 frames of 160x96" in run.stdout(run.cell_with("av.open(str(path))"))

    assert v["red_after"] - v["red_before"] > 5, "the transition moves the colour balance"
    assert v["moving"] > 5 and v["frozen"] < 1, "the pause freezes the picture"
    assert run.images(run.cell_with("plt.subplots(2, 1")) == 1


# 10: recording on the server, rendering again in the kernel ---------------------------------

RECORDING = "10_recording_and_rendering.ipynb"
#: The suite's run: a tiny frame, short stretches between the updates.
RECORDING_SHORT = {"HEIGHT": 64, "WIDTH": 64, "CHUNKS_A": 2, "CHUNKS_B": 1, "TRANSITION_STEPS": 2, "CHUNKS_AFTER": 1}


def test_recording_notebook_defaults():
    _, settings = settings_cell(nbformat.read(NOTEBOOKS / RECORDING, as_version=4))
    assert (settings["HEIGHT"], settings["WIDTH"]) == (96, 160) and settings["SYNTHETIC"] is True
    assert len({settings["PROMPT_A"], settings["PROMPT_B"], settings["PROMPT_C"]}) == 3


def test_recording_and_rendering(tmp_path, synthetic_models):
    run = execute(RECORDING, tmp_path, synthetic_models, {
        "reproduced": "result.reproduced", "compared": "result.compared", "mismatches": "result.mismatches",
        "notes": "result.notes", "rows": "rows", "stopped": "stopped", "timeline": "timeline",
        "weights": "provenance['weights']", "rendered_weights": "rendered_provenance['weights']",
        "shapes": "[live_frames.shape, rendered_frames.shape]", "difference": "int(difference.max())",
    }, parameters=RECORDING_SHORT)
    v = run.values
    started_its_own_server(run)

    # The server recorded from mid-stream, with the prompt switch and the transition inside it.
    stopped, timeline = v["stopped"], v["timeline"]
    recorded = [record["chunk"] for record in timeline["chunks"]]
    wanted = sum(RECORDING_SHORT[key] for key in ("CHUNKS_A", "CHUNKS_B", "TRANSITION_STEPS", "CHUNKS_AFTER"))
    assert stopped["state"] == "stopped" and stopped["stop_reason"] == "requested"
    assert len(recorded) == stopped["chunks"] >= wanted and recorded[0] == timeline["first_chunk"] >= 1
    updates = {key: event["chunk"] for event in timeline["events"] for key in event["parameters"]}
    assert recorded[0] < updates["prompts"] < updates["transition"] <= recorded[-1], timeline["events"]

    # Every recorded chunk was generated again, bit for bit, and the table says so row by row.
    assert v["reproduced"] is True and v["mismatches"] == [] and v["notes"] == []
    assert v["compared"] == len(recorded)
    assert [row[0] for row in v["rows"]] == recorded and all(live == rendered for _, live, rendered in v["rows"])
    table = run.stdout(run.cell_with("scope.render("))
    for chunk, live, _ in v["rows"]:
        assert f"{chunk:>5}  {live[:12]}  {live[:12]:<12}  True" in table
    assert "False" not in table.split("equal", 1)[1]

    # Both MP4s hold the recorded frames; the frame shown decodes the same from either.
    frames = stopped["frames"]
    assert v["shapes"] == [[frames, 64, 64, 3]] * 2 and v["difference"] == 0
    assert run.images(run.cell_with("imshow")) == 1

    # Provenance names every weight file by content, synthetic here, the same for the render.
    weights = v["weights"]
    assert weights and all(len(w["sha256"]) == 64 and w["synthetic"] is True for w in weights), weights
    assert v["rendered_weights"] == weights
    printed = run.stdout(run.cell_with("rendered_provenance"))
    assert "same weights in the recording and the render: True" in printed
    assert all(w["sha256"][:16] in printed for w in weights)
