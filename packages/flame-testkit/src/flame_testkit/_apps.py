"""The default applications a real cluster registers besides flmrun (A5).

* ``flmping`` (``python -m flame_testkit._apps ping``): a liveness check; each task
  returns its input (``b"pong"`` when it has none).
* ``flmexec`` (``python -m flame_testkit._apps exec``): runs a Python or shell
  script per task, as Flame's flmexec-service does, speaking its JSON:

  - session common_data (optional): ``{"language", "runtime", "min_instances",
    "max_instances", "resreq"}``; ``language`` is the session's default;
  - task input: ``{"language", "code", "input": [bytes as ints], "runtime"?}``;
  - task output: ``{"data": [bytes as ints]}``, the script's stdout.

  The script runs in the instance's working directory, with ``input`` on its
  stdin, for at most ``FLMEXEC_TIMEOUT`` seconds (default 300; a ``runtime``
  number in the task or the session overrides it).  A non-zero exit, or running
  out of time, fails the task with the script's stderr in the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from typing import Any

import flmrun
from flmrun import FlameService, SessionContext, TaskContext

__all__ = ["EXEC_TIMEOUT_ENV", "ExecService", "PingService", "main", "serve"]

EXEC_TIMEOUT_ENV = "FLMEXEC_TIMEOUT"
DEFAULT_EXEC_TIMEOUT = 300.0
STDERR_LIMIT = 4096
LANGUAGES = {
    "python": [sys.executable, "-c"],
    "shell": ["/bin/sh", "-c"],
    "sh": ["/bin/sh", "-c"],
    "bash": ["bash", "-c"],
}


class PingService(FlameService):
    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        return context.input if context.input is not None else b"pong"


class ExecError(Exception):
    """The script failed; the message is what the client sees."""


def _document(raw: bytes | None, what: str) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise ExecError(f"{what} is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ExecError(f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _timeout(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


class ExecService(FlameService):
    def __init__(self) -> None:
        self.defaults: dict[str, Any] = {}

    def on_session_enter(self, context: SessionContext) -> None:
        self.defaults = _document(context.common_data, "the session's common_data")

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        task = _document(context.input, "the task input")
        language = str(task.get("language") or self.defaults.get("language") or "python").lower()
        if language not in LANGUAGES:
            raise ExecError(
                f"unsupported language {language!r}; use one of {', '.join(sorted(LANGUAGES))}"
            )
        code = task.get("code")
        if not isinstance(code, str):
            raise ExecError("the task input needs 'code', a string")
        data = task.get("input") or []
        if not isinstance(data, list) or not all(isinstance(b, int) for b in data):
            raise ExecError("'input' must be a list of byte values")
        limit = (
            _timeout(task.get("runtime"))
            or _timeout(self.defaults.get("runtime"))
            or _timeout(float(os.environ.get(EXEC_TIMEOUT_ENV, "0") or 0))
            or DEFAULT_EXEC_TIMEOUT
        )
        # The script gets a process group of its own, so that running out of time
        # ends everything it started; it dies with the instance (setpriv's pdeathsig).
        command = [*LANGUAGES[language], code]
        setpriv = shutil.which("setpriv") if sys.platform == "linux" else None
        if setpriv:
            command = [setpriv, "--pdeathsig", "KILL", "--", *command]
        with subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=os.getcwd(),
            start_new_session=True,
        ) as proc:
            try:
                out, err = proc.communicate(bytes(data), timeout=limit)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                _, err = proc.communicate()
                text = err[-STDERR_LIMIT:].decode(errors="replace").strip()
                raise ExecError(
                    f"the {language} script ran out of time ({limit:g}s); {text}"
                ) from None
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # whatever it left running
        if proc.returncode != 0:
            text = err[-STDERR_LIMIT:].decode(errors="replace").strip()
            raise ExecError(f"the {language} script exited with code {proc.returncode}: {text}")
        return json.dumps({"data": list(out)}).encode()


def serve(service: type[FlameService], prog: str) -> int:
    """Serve ``service`` as an instance until SIGTERM; returns the exit status."""
    from flmrun._server import configure_logging

    configure_logging()
    try:
        flmrun.run(service)
    except flmrun.InstanceConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    services = {"ping": PingService, "exec": ExecService}
    if len(args) != 1 or args[0] not in services:
        print("usage: python -m flame_testkit._apps ping|exec", file=sys.stderr)
        return 2
    return serve(services[args[0]], "flame_testkit._apps")


if __name__ == "__main__":
    sys.exit(main())
