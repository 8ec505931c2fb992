"""``daydream-scope`` with the test-only pipelines registered, for real servers that pages drive.

Run as ``python -m tests.serve_test_pipelines [daydream-scope arguments]`` with the checkout on
``PYTHONPATH``; ``spawn_scope_server(..., test_pipelines=True)`` does both. The pipelines are
registered through the registry's public API, after the built-in ones.
"""

from __future__ import annotations

from scope.cli import main
from scope.pipelines import registry
from tests.pipelines import TEST_PIPELINES

if __name__ == "__main__":
    registry.pipeline_ids()  # the built-in pipelines first, as a plain server lists them
    for cls in TEST_PIPELINES:
        registry.register(cls)
    main()
