"""A cluster that this process did not start: a real Flame cluster, or a local one
started elsewhere (``flame-local up``).  The pytest plugin's fixtures use one when
``FLAME_TEST_ENDPOINT`` names it, so a project's tests run unchanged against the
fake or a real cluster."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from flamepy._config import (
    FLAME_CA_FILE,
    FLAME_CACHE_ENDPOINT,
    FLAME_ENDPOINT,
    FLAME_TOKEN,
    FLAME_TOKEN_FILE,
)

TEST_ENDPOINT = "FLAME_TEST_ENDPOINT"
"""The Frontend the pytest fixtures use instead of starting a local cluster."""
TEST_CACHE_ENDPOINT = "FLAME_TEST_CACHE_ENDPOINT"
"""Its object cache (optional: flamepy's default applies when unset)."""
PASSED_ON = (FLAME_TOKEN, FLAME_TOKEN_FILE, FLAME_CA_FILE)
"""Access settings of the caller's environment that go with the endpoints."""


@dataclass(frozen=True)
class RemoteCluster:
    endpoint: str
    cache_endpoint: str | None = None
    access: tuple[tuple[str, str], ...] = ()
    """``FLAME_TOKEN``/``FLAME_TOKEN_FILE``/``FLAME_CA_FILE`` to pass on to clients."""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RemoteCluster | None:
        env = os.environ if environ is None else environ
        endpoint = (env.get(TEST_ENDPOINT) or "").strip()
        if not endpoint:
            return None
        cache = (env.get(TEST_CACHE_ENDPOINT) or "").strip() or None
        access = tuple((k, env[k]) for k in PASSED_ON if env.get(k))
        return cls(endpoint, cache, access)

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ if base is None else base)
        env[FLAME_ENDPOINT] = self.endpoint
        if self.cache_endpoint:
            env[FLAME_CACHE_ENDPOINT] = self.cache_endpoint
        env.update(self.access)
        return env

    def leftover_processes(self) -> list[int]:
        """Processes of this cluster are not ours to count."""
        return []

    def start(self) -> RemoteCluster:
        return self

    def stop(self) -> None:
        """Nothing to stop: the cluster is not ours."""
