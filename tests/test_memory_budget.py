"""The pool's arithmetic: estimates from file headers, measured tensors, the budget, eviction.

The pool is driven here with pipeline classes whose loads hold a known tensor, so every figure
is checked exactly; tests/test_pipeline_pool.py drives the same pool through the server.
"""

from __future__ import annotations

import asyncio

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from scope.pipelines.base import LoadContext, MemoryEstimate, Pipeline
from scope.streaming import memory_budget
from scope.streaming.memory_budget import device_budget, file_weights, held_bytes, loaded_bytes
from scope.streaming.local_worker import LocalWorker
from scope.streaming.pool import LOADED, NOT_LOADED, LoadTarget, OverBudget, PipelinePool

MIB = 2**20


def test_file_weights_are_read_from_the_safetensors_header(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"a": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.zeros(7, dtype=torch.float32)}, str(path))
    weights = file_weights(path)
    assert (weights.elements, weights.stored_bytes) == (15 + 7, 15 * 2 + 7 * 4)
    # Loaded in float32 every element takes 4 bytes, in bfloat16 two; a missing file counts nothing.
    assert loaded_bytes([path, tmp_path / "missing.safetensors"], torch.float32) == 22 * 4
    assert loaded_bytes([path], torch.bfloat16) == 22 * 2
    # A folder counts its files.
    (tmp_path / "sub").mkdir()
    save_file({"c": torch.zeros(4, dtype=torch.float16)}, str(tmp_path / "sub" / "more.safetensors"))
    assert file_weights(tmp_path / "sub").elements == 4


def test_held_bytes_counts_each_storage_once_through_attributes():
    linear = torch.nn.Linear(8, 4, bias=False)  # 32 float32 = 128 bytes

    class Holder:
        def __init__(self):
            self.module = linear
            self.view = linear.weight.detach()[0]  # a view of the same storage
            self.extra = {"buffers": [torch.zeros(10, dtype=torch.float64)]}  # 80 bytes
            self.meta = torch.empty(1000, device="meta")  # holds nothing

    assert held_bytes(Holder()) == 128 + 80
    assert held_bytes(linear) == 128
    # Budgets are per device: host tensors count nothing against a GPU's.
    assert held_bytes(Holder(), device="cuda") == 0 and held_bytes(Holder(), device="cpu") == 208
    # What ``exclude`` holds is left out (a stream, less its pipeline's weights).
    assert held_bytes(Holder(), exclude=linear) == 80


def test_the_budget_is_the_setting_or_the_free_memory_less_a_margin(monkeypatch):
    cpu = torch.device("cpu")
    assert device_budget(cpu, 123, pool_bytes=10**9) == 123
    monkeypatch.setattr(memory_budget, "available_host_bytes", lambda: 800 * MIB)
    # What the pool holds counts as usable: it is the pool's to reshuffle.
    assert device_budget(cpu, 0, pool_bytes=200 * MIB) == int(1000 * MIB * 0.8)


class _Params(BaseModel):
    size: int = 1


def _fake_pipeline(name: str, weights_mib: int, estimate_mib: int | None = None, stream_mib: int = 0):
    """A pipeline class whose load holds ``weights_mib`` MiB and whose estimate says ``estimate_mib``."""

    class Fake(Pipeline):
        load_params_model = _Params

        def __init__(self, params):
            super().__init__(params)
            self.weights = torch.zeros(weights_mib * MIB, dtype=torch.uint8)

        @classmethod
        def load(cls, params, context):
            return cls(params)

        @classmethod
        def memory_estimate(cls, params, context):
            return MemoryEstimate((estimate_mib or weights_mib) * MIB, stream_mib * MIB)

        def open_stream(self):
            raise NotImplementedError

    Fake.__name__ = name
    return Fake


class _RecordingWorker(LocalWorker):
    """A CPU worker that records what it frees."""

    def __init__(self, context, freed: list[str]):
        super().__init__("local-0", "cpu", context)
        self.freed = freed

    async def free(self, pipeline) -> None:
        self.freed.append(type(pipeline).__name__)


class _Pool:
    """A pool on a real device thread with a budget set in MiB."""

    def __init__(self, tmp_path, budget_mib: int):
        self.budget = budget_mib * MIB
        self.freed: list[str] = []
        context = LoadContext(tmp_path, tmp_path, tmp_path)
        self.pool = PipelinePool(context, _RecordingWorker(context, self.freed), budget=lambda held: self.budget)

    async def load(self, cls, name: str | None = None):
        target = LoadTarget(name or cls.__name__, {})
        slot, started = await self.pool.admit(cls, _Params(), target)
        await slot.task if started else None
        return slot


def test_a_load_that_does_not_fit_unloads_the_least_recently_used_idle_pipeline(tmp_path):
    async def run():
        pool = _Pool(tmp_path, budget_mib=10)
        a = await pool.load(_fake_pipeline("A", 4))
        b = await pool.load(_fake_pipeline("B", 4))
        assert a.status == b.status == LOADED and a.memory.measured_weights == 4 * MIB
        await pool.load(_fake_pipeline("A", 4))  # A used again: B is now the least recently used
        c = await pool.load(_fake_pipeline("C", 4))
        assert (b.status, a.status, c.status) == (NOT_LOADED, LOADED, LOADED)
        assert pool.freed == ["B"] and set(pool.pool.slots) == {a.target.key, c.target.key}

    asyncio.run(run())


def test_a_load_is_refused_naming_the_holders_when_every_pipeline_is_in_use(tmp_path):
    async def run():
        pool = _Pool(tmp_path, budget_mib=10)
        a = await pool.load(_fake_pipeline("A", 4, stream_mib=1))
        await pool.pool.bind(a, "session-1")
        b = await pool.load(_fake_pipeline("B", 4))
        await pool.pool.bind(b, "session-2")
        with pytest.raises(OverBudget) as refused:
            await pool.load(_fake_pipeline("C", 4))
        holders = {h["pipeline_id"]: h for h in refused.value.holders}
        assert holders["A"]["sessions"] == ["session-1"] and holders["A"]["held_bytes"] == 5 * MIB
        assert holders["B"]["sessions"] == ["session-2"] and refused.value.budget == 10 * MIB
        assert refused.value.errors(["body", "pipeline_id"])[0]["loc"] == ["body", "pipeline_id"]
        assert len(pool.pool.slots) == 2 and pool.freed == []
        # A second stream on A needs its caches too: 9 + 1 fits, 10 + 1 does not.
        await pool.pool.bind(a, "session-3")
        with pytest.raises(OverBudget):
            await pool.pool.bind(a, "session-4")
        # Once B's session ends, B is idle and makes way.
        await pool.pool.release(b, "session-2")
        await pool.load(_fake_pipeline("C", 4))
        assert pool.freed == ["B"]

    asyncio.run(run())


def test_estimates_are_corrected_by_what_the_last_load_measured(tmp_path):
    async def run():
        pool = _Pool(tmp_path, budget_mib=100)
        # The estimate says 2 MiB; the load holds 6.
        first = await pool.load(_fake_pipeline("A", 6, estimate_mib=2, stream_mib=1), name="A")
        assert (first.memory.estimated.weights_bytes, first.memory.measured_weights) == (2 * MIB, 6 * MIB)
        # Its first stream turns out to hold 3 MiB, not 1: two sessions now count 6 + 2 x 3.
        first.stream_measured(3 * MIB)
        await pool.pool.bind(first, "s1")
        await pool.pool.bind(first, "s2")
        assert first.held_bytes == 12 * MIB
        await pool.pool.unload(first)
        second = pool.pool.estimate(_fake_pipeline("A", 6, estimate_mib=2, stream_mib=1), _Params(), "A")
        assert (second.estimated.weights_bytes, second.estimated.stream_bytes) == (6 * MIB, 3 * MIB)

    asyncio.run(run())


def test_a_pipeline_marked_to_unload_goes_when_its_last_session_ends(tmp_path):
    async def run():
        pool = _Pool(tmp_path, budget_mib=100)
        a = await pool.load(_fake_pipeline("A", 1))
        await pool.pool.bind(a, "s1")
        await pool.pool.bind(a, "s2")
        a.unload_when_idle = True
        await pool.pool.release(a, "s1")
        assert a.status == LOADED
        await pool.pool.release(a, "s2")
        assert a.status == NOT_LOADED and pool.freed == ["A"]

    asyncio.run(run())


@pytest.mark.parametrize(
    ("pipeline_id", "load_params"),
    [("longlive", {}), ("longlive", {"quantization": "fp8_e4m3fn"}), ("krea-realtime-video", {})],
    ids=["longlive", "longlive-fp8", "krea-fused-qkv"],
)
def test_the_estimate_of_a_load_matches_what_it_holds(synthetic_models, one_thread, pipeline_id, load_params):
    """Read from the file headers before the load, the weights come within 2% of the tensors the
    loaded pipeline holds (fp8 blocks, fused q/k/v and a warm-up's cached prompt included), and a
    stream holds at least the attention caches the estimate counts."""
    from scope.pipelines.registry import get_pipeline_class

    cls = get_pipeline_class(pipeline_id)
    context = LoadContext(synthetic_models, synthetic_models / "lora", synthetic_models / "assets")
    params = cls.load_params_model(height=64, width=64, **load_params)
    estimate = cls.memory_estimate(params, context)
    pipeline = cls.load(params, context)
    assert estimate.weights_bytes == pytest.approx(pipeline.memory_held(), rel=0.02)
    # The prompt cache is counted apart, at its full size: the measure leaves out what it holds so
    # far (Krea's warm-up encoded a prompt).
    assert estimate.cache_bytes > 0
    if pipeline_id == "krea-realtime-video":
        assert held_bytes(pipeline) > pipeline.memory_held()
    stream = pipeline.open_stream()
    stream.generate(prompts=[{"text": "a lighthouse", "weight": 1.0}])
    assert held_bytes(stream, exclude=pipeline) >= estimate.stream_bytes


def test_a_refused_load_unloads_nothing(tmp_path):
    """Idle pipelines are only given up for a load that then fits."""

    async def run():
        pool = _Pool(tmp_path, budget_mib=10)
        a = await pool.load(_fake_pipeline("A", 4))
        await pool.pool.bind(a, "session-1")
        idle = await pool.load(_fake_pipeline("B", 4))
        with pytest.raises(OverBudget):
            await pool.load(_fake_pipeline("C", 8))  # 4 in use + 8 > 10 even without B
        assert idle.status == LOADED and pool.freed == []

    asyncio.run(run())
