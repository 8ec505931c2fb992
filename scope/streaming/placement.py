"""Where a load or a session goes, among the workers.

A load goes to the least-loaded worker that already holds the pipeline (so loading it again is
free), else to the worker with the most room for it. A session goes to the least-loaded worker
that holds its pipeline and may take another session; when every such worker is at its session
limit, the pipeline is loaded on the worker with the most room that may. Ties go to the worker
listed first, so placement is predictable.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scope.streaming.pool import LoadTarget
    from scope.streaming.worker import Worker


class NoWorker(Exception):
    """No worker may take the load or the session (every one is lost, or at its session limit)."""


def for_load(workers: list[Worker], target: LoadTarget) -> Worker:
    """The worker a load of ``target`` goes to."""
    alive = _alive(workers)
    holders = [worker for worker in alive if worker.pool.holds(target)]
    if holders:
        return min(holders, key=lambda worker: worker.sessions())
    return max(alive, key=lambda worker: worker.pool.room_bytes())


def for_session(workers: list[Worker], target: LoadTarget) -> Worker:
    """The worker a new session (or render) of ``target`` goes to."""
    alive = _alive(workers)
    open_ = [worker for worker in alive if worker.has_room_for_session()]
    if not open_:
        caps = sorted({worker.max_sessions for worker in alive})
        raise NoWorker(
            f"Every worker is at its session limit ({', '.join(map(str, caps))} per worker): "
            "try again when a session ends."
        )
    holders = [worker for worker in open_ if worker.pool.holds(target)]
    if holders:
        return min(holders, key=lambda worker: worker.sessions())
    return max(open_, key=lambda worker: worker.pool.room_bytes())


def _alive(workers: list[Worker]) -> list[Worker]:
    alive = [worker for worker in workers if worker.alive]
    if not alive:
        lost = "; ".join(f"{worker.id}: {worker.error}" for worker in workers)
        raise NoWorker(f"No worker is left to run pipelines ({lost}).")
    return alive
