"""The owner's program under attack (run by test_security.py).

With no FLAME_ENDPOINT it uses the embedded cluster of a running Runner program;
otherwise the cluster the environment names.  It runs a Runner call, keeps a
secret in the cache and a session with a task open, prints what an attacker
would aim at (one JSON line), waits for a line on stdin, then reads the secret
back and runs another Runner call, and prints both results (a second JSON line).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import flamepy
from flamepy import Runner
from flamepy.core import cache


def double(x: int) -> int:
    return 2 * x


def files_of(cluster: object) -> list[str]:
    work = Path(cluster.work_dir)  # type: ignore[attr-defined]
    sockets = Path(cluster.socket_dir)  # type: ignore[attr-defined]
    found = [str(work), str(sockets), *(str(p) for p in sorted(work.rglob("*"))[:40])]
    local = cluster.cache.local_dir if cluster.cache else None  # type: ignore[attr-defined]
    if local:
        found += [local, *(str(p) for p in Path(local).iterdir())]
    return found


def main() -> None:
    with Runner("victim") as rr:
        first = rr.service(double)(21).get()
        ref = cache.put_object("secretapp/s1", {"secret": "hunter2"})
        session = flamepy.create_session("flmrun")
        session.create_task(b"not a runner request")
        files: list[str] = []
        try:
            from flame_testkit import _embedded

            if _embedded._cluster is not None:
                files = files_of(_embedded._cluster.cluster)
        except ImportError:
            pass
        print(
            json.dumps(
                {
                    "endpoint": os.environ["FLAME_ENDPOINT"],
                    "cache_endpoint": os.environ["FLAME_CACHE_ENDPOINT"],
                    "key": ref.key,
                    "version": ref.version,
                    "session_id": session.id,
                    "runner_result": first,
                    "files": files,
                }
            ),
            flush=True,
        )
        sys.stdin.readline()
        try:
            secret = cache.get_object(ref)
        except Exception as exc:
            secret = f"{type(exc).__name__}: {exc}"
        after = rr.service(double)(4).get()
        try:
            session.close()
        except flamepy.NotFoundError:  # the attacker's unregister of flmrun took it along
            after = -1
        print(json.dumps({"secret": repr(secret), "runner_after": after}), flush=True)


if __name__ == "__main__":
    main()
