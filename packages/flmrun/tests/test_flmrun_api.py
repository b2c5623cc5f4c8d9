"""Pin flmrun's public API."""

from __future__ import annotations

import flmrun


def test_all_is_pinned() -> None:
    assert set(flmrun.__all__) == {
        "ApplicationContext", "FlameService", "FlmrunError", "InstanceConfigError",
        "ServiceLoadError", "SessionContext", "TaskContext", "__version__", "run", "serve",
    }  # fmt: skip
