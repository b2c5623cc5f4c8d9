"""Run byte-in/byte-out tasks on Flame with the core client API.

With no endpoint configured (no FLAME_ENDPOINT, no ~/.flame/flame.yaml) flamepy
starts a local cluster in-process, so this runs anywhere flame-testkit is
installed:  uv run python examples/hello_sessions.py

It uses two applications that every Flame cluster registers at start: ``flmping``
returns each task's input, and ``flmexec`` runs a script per task.
"""

from __future__ import annotations

import json

import flamepy


def script(code: str, data: bytes = b"") -> bytes:
    """A task input of flmexec: Python code, with ``data`` on its stdin."""
    return json.dumps({"language": "python", "code": code, "input": list(data)}).encode()


def main() -> None:
    with flamepy.create_session("flmping", max_instances=2) as session:
        print("one task:", session.invoke(b"hello", timeout=60))
        futures = [session.run(f"task-{i}".encode()) for i in range(100)]
        outputs = [f.result(timeout=60) for f in futures]
        print(f"{len(outputs)} tasks, last output: {outputs[-1]!r}")
    with flamepy.create_session("flmexec") as session:
        upper = "import sys; print(sys.stdin.read().upper(), end='')"
        reply = json.loads(session.invoke(script(upper, b"shout"), timeout=60) or b"{}")
        print("a script's stdout:", bytes(reply["data"]))
        try:
            session.invoke(script("raise SystemExit('something went wrong')"), timeout=60)
        except flamepy.TaskFailedError as exc:
            print("a failed task raises TaskFailedError:", exc.message.splitlines()[0])


if __name__ == "__main__":
    main()
