"""Workers as actors of a real Ray cluster on loopback, served by a real ``daydream-scope``.

One cluster for the module (a head on 127.0.0.1 declaring two units of a custom resource that
stands in for GPUs, no dashboard, a small object store), torn down at the end. The server runs
the test pipelines, which its actors import by reference; its sessions are the Python client's
aiortc peers. Two sessions stream on two workers with their own pictures; killing one worker's
actor process ends only its session, with ``stream_stopped`` naming the loss, and the server
goes on serving on the other worker.
"""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from scope.client import ScopeClient
from tests._subprocess_server import running_scope_server
from tests.pipelines import pattern_level, prompt_level
from tests.polling import wait_until
from tests.ray_cluster import RAY_ENV, TEST_RESOURCE, LocalRayCluster


@pytest.fixture(scope="module")
def cluster():
    with LocalRayCluster(workers=2) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def server(cluster, tmp_path_factory):
    args = (
        "--ray-address", cluster.address, f"--ScopeApp.ray_resource={TEST_RESOURCE}",
        "--ScopeApp.max_sessions_per_worker=1", "--ScopeApp.worker_threads=1",
    )
    root = tmp_path_factory.mktemp("ray-server")
    with running_scope_server(root, *args, env=RAY_ENV, test_pipelines=True, ready_timeout=240) as server:
        yield server


def assert_shows(frames: np.ndarray, prompt: str) -> None:
    """The newest of ``frames`` (N, H, W, 3) shows ``prompt``'s brightness."""
    frame = frames[-1]
    expected = prompt_level({"prompts": [{"text": prompt}]})
    shown = pattern_level(frame)
    assert abs(shown - expected) <= 6, (prompt, shown, expected)


def status_of(client: ScopeClient) -> dict:
    return client.request("GET", "api/v1/pipeline/status").json()


def workers(client: ScopeClient) -> dict[str, dict]:
    return {w["id"]: w for w in status_of(client)["workers"]}


async def test_sessions_stream_on_two_ray_workers_and_a_killed_worker_ends_only_its_own(server):
    with ScopeClient(server.url, token=server.token) as client:
        found = workers(client)
        assert sorted(found) == ["ray-0", "ray-1"]
        assert {(w["kind"], w["state"], w["node_ip"]) for w in found.values()} == {("ray", "ready", "127.0.0.1")}
        assert len({w["pid"] for w in found.values()}) == 2 and os.getpid() not in {w["pid"] for w in found.values()}
        client.ensure_pipeline("test-pattern", {}, timeout=120)

        async with client.stream("a red fox") as fox, client.stream("a blue whale") as whale:
            for stream, prompt in ((fox, "a red fox"), (whale, "a blue whale")):
                assert_shows(await stream.read(timeout=60), prompt)
            placed = {info.id: info.worker for info in client.sessions()}
            assert {placed[fox.session_id], placed[whale.session_id]} == {"ray-0", "ray-1"}
            status = status_of(client)
            assert sorted(e["worker"] for e in status["pipelines"]) == ["ray-0", "ray-1"]

            # The fox's worker dies: its actor's process is killed.
            lost = placed[fox.session_id]
            os.kill(workers(client)[lost]["pid"], signal.SIGKILL)
            stopped = await fox.wait_message("stream_stopped", timeout=60, since=0)
            assert f"Worker {lost} was lost" in stopped["error_message"], stopped
            # The whale streams on: new frames, its own picture, no stop.
            before = len(whale.messages)
            for _ in range(3):
                assert_shows(await whale.read(timeout=30), "a blue whale")
            assert not [m for m in whale.messages[before:] if m.get("type") == "stream_stopped"]

            after = workers(client)
            assert after[lost]["state"] == "lost" and after[lost]["error"]
            assert [w["state"] for i, w in sorted(after.items()) if i != lost] == ["ready"]
            status = status_of(client)
            on_lost = [e for e in status["pipelines"] if e["worker"] == lost]
            assert [e["status"] for e in on_lost] == ["error"] and f"Worker {lost} was lost" in on_lost[0]["error"]
            await wait_until(lambda ids: ids == [whale.session_id], 30, "only the whale's session listed",
                             value=lambda: [info.id for info in client.sessions()])
            survivor = placed[whale.session_id]

        # The server keeps serving on the worker that remains.
        await wait_until(lambda w: w[survivor]["sessions"] == 0, 30, "the whale's session gone", value=lambda: workers(client))
        async with client.stream("a green owl") as owl:
            assert_shows(await owl.read(timeout=60), "a green owl")
            assert [info.worker for info in client.sessions()] == [survivor]
