"""Run byte-in/byte-out tasks on Flame with the core client API.

With no endpoint configured (no FLAME_ENDPOINT, no ~/.flame/flame.yaml) flamepy
starts a local cluster in-process, so this runs anywhere flame-testkit is
installed:  uv run python examples/hello_sessions.py
"""

from __future__ import annotations

import logging

import flamepy


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # "flmtest" is the local cluster's test application: it echoes its input.
    with flamepy.create_session("flmtest", common_data=b"demo", max_instances=2) as session:
        print("one task:", session.invoke(b"hello", timeout=60))
        futures = [session.run(f"task-{i}".encode()) for i in range(100)]
        outputs = [f.result(timeout=60) for f in futures]
        print(f"{len(outputs)} tasks, last output: {outputs[-1]!r}")
        try:
            session.invoke(b"fail:something went wrong", timeout=60)
        except flamepy.TaskFailedError as exc:
            print("a failed task raises TaskFailedError:", exc.message.splitlines()[0])


if __name__ == "__main__":
    main()
