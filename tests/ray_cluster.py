"""A one-node Ray cluster on loopback, started for a test module (or a benchmark) and torn down.

The head advertises 127.0.0.1 only: Ray otherwise advertises the machine's other interface
address (it resolves a loopback ``--node-ip-address`` to it), and a test must send nothing there.
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` is Ray's own switch for a cluster of this machine alone:
with it, every Ray process (the head, its workers, and the servers given :attr:`env`) uses the
loopback address. The dashboard is left out and the object store kept small. Workers are declared
through a custom resource standing in for GPUs, so a CPU machine places actors the way a GPU
cluster places them by ``num_gpus``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests._subprocess_server import CHECKOUT, free_port

#: What the test clusters declare in place of GPUs.
TEST_RESOURCE = "scope_test_gpu"
#: The smallest object store Ray accepts comfortably; frames pass through it.
OBJECT_STORE_BYTES = 100 * 2**20

#: The environment every process of the cluster and its servers needs.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # loopback addresses only
    "RAY_AUTH_MODE": "disabled",  # no token file written to the home directory
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage report sent anywhere
}


def ray_command() -> list[str]:
    found = Path(sys.executable).parent / "ray"
    return [str(found)] if found.exists() else [shutil.which("ray") or "ray"]


class LocalRayCluster:
    """``ray start --head --block`` in its own process group; :meth:`stop` ends the group."""

    def __init__(self, workers: int = 2, *, resource: str = TEST_RESOURCE, cpus: int = 2):
        self.port = free_port()
        self.resource = resource
        #: Short: Ray's socket paths must fit in 107 bytes.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="scope-ray-"))
        # The checkout on the path: actors import the test pipelines the servers send them.
        self.env = {**os.environ, **RAY_ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(CHECKOUT), os.environ.get("PYTHONPATH")]))}
        command = [
            *ray_command(), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={self.port}",
            "--include-dashboard=false", f"--object-store-memory={OBJECT_STORE_BYTES}", f"--num-cpus={cpus}",
            f"--resources={json.dumps({resource: workers})}", "--disable-usage-stats", f"--temp-dir={self.temp_dir}",
        ]
        self.log = open(self.temp_dir / "head.log", "wb")
        self.process = subprocess.Popen(command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 120.0) -> "LocalRayCluster":
        """Wait until the head's GCS answers on loopback (raises with the head's log if it ends)."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Ray head exited:\n{(self.temp_dir / 'head.log').read_text(errors='replace')}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Ray head did not listen within {timeout:g} s") from None
                time.sleep(0.2)

    def stop(self) -> None:
        """End the head, its raylet and every worker process it started: at once, as a test
        cluster holds nothing to save (``ray start --block`` does not end on SIGTERM once
        actors have run)."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(timeout=10)
        # Processes that left the group (worker processes) go by their session directory.
        subprocess.run(["pkill", "-KILL", "-f", str(self.temp_dir)], check=False)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> "LocalRayCluster":
        return self.wait_ready()

    def __exit__(self, *exc_info) -> None:
        self.stop()
