"""The default applications a real cluster registers besides flmrun (A5).

* ``flmping`` (``python -m flame_testkit._apps ping``): a liveness check; each task
  returns its input (``b"pong"`` when it has none).
* ``flmexec`` (``python -m flame_testkit._apps exec``): runs a Python or shell
  script per task, as Flame's flmexec-service does, speaking its JSON:

  - session common_data (optional): ``{"language", "runtime", "min_instances",
    "max_instances", "resreq"}`` (what ``flamepy.tools.sandbox`` writes); its
    ``language`` and ``runtime`` are the defaults of the session's tasks;
  - task input: ``{"language", "code", "input": [bytes as ints], "runtime"?}``;
    ``language`` is ``python`` or ``shell`` (any case), as Flame's; ``runtime``
    picks the interpreter: a Python version (``"3.12"`` or ``"python3.12"``) or a
    shell (``"bash"``, ``"sh"``, ...);
  - task output: ``{"data": [bytes as ints]}``, the script's stdout.

  The script runs in the instance's working directory, with ``input`` on its
  stdin (empty when absent), for at most ``FLMEXEC_TIMEOUT`` seconds (default
  300).  A non-zero exit, or running out of time, fails the task with the
  script's stderr in the message.  Python runs on this interpreter unless
  ``runtime`` names another version; shell scripts run on bash (``/bin/sh`` where
  there is none), as Flame's run them on ``/bin/bash``.

  Not Flame's (testkit only, kept for older tests): a *number* as ``runtime``,
  which Flame would refuse to parse, is taken as the time limit in seconds.
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
LANGUAGES = ("python", "shell")


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


def _runtime(value: object) -> str | None:
    """A ``runtime`` naming an interpreter: a non-empty string, else None."""
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _python(runtime: str | None) -> str:
    """The Python interpreter for ``runtime`` (a version such as 3.12 or python3.12)."""
    if runtime is None:
        return sys.executable
    version = runtime.lower().removeprefix("python")
    if version in ("", str(sys.version_info[0]), "{}.{}".format(*sys.version_info[:2])):
        return sys.executable
    found = shutil.which(f"python{version}") if version.replace(".", "").isdigit() else None
    if found is None:
        raise ExecError(f"runtime {runtime!r}: no such Python on this executor")
    return found


def _shell(runtime: str | None) -> str:
    """The shell for ``runtime`` (a name on PATH or an absolute path); bash by default."""
    if runtime is None:
        return shutil.which("bash") or "/bin/sh"
    found = shutil.which(runtime) if "/" not in runtime or os.path.isabs(runtime) else None
    if found is None:
        raise ExecError(f"runtime {runtime!r}: no such shell on this executor")
    return found


def _common_data(context: SessionContext) -> bytes | None:
    # A method in flmrun as in Flame's SDK 0.6 (an attribute in earlier flmrun).
    value: object = getattr(context, "common_data", None)
    if callable(value):
        value = value()
    return bytes(value) if isinstance(value, (bytes, bytearray)) else None


def _stderr(err: bytes) -> str:
    """``": <the end of stderr>"``, or nothing when the script wrote none."""
    text = err[-STDERR_LIMIT:].decode(errors="replace").strip()
    return f": {text}" if text else " (no stderr)"


def _limit() -> float:
    """The time limit of one script: ``$FLMEXEC_TIMEOUT`` seconds, else 300."""
    try:
        value = float(os.environ.get(EXEC_TIMEOUT_ENV, "") or 0)
    except ValueError:
        value = 0
    return _timeout(value) or DEFAULT_EXEC_TIMEOUT


class ExecService(FlameService):
    def __init__(self) -> None:
        self.defaults: dict[str, Any] = {}

    def on_session_enter(self, context: SessionContext) -> None:
        # Flame's flmexec ignores common_data: a session with any other payload
        # still runs its tasks, with no defaults.
        try:
            self.defaults = _document(_common_data(context), "the session's common_data")
        except ExecError:
            self.defaults = {}

    def on_task_invoke(self, context: TaskContext) -> bytes | None:
        task = _document(context.input, "the task input")
        language = str(task.get("language") or self.defaults.get("language") or "python").lower()
        if language not in LANGUAGES:
            raise ExecError(f"unsupported language {language!r}; use one of {', '.join(LANGUAGES)}")
        code = task.get("code")
        if not isinstance(code, str):
            raise ExecError("the task input needs 'code', a string")
        data = task.get("input") or []
        if not isinstance(data, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in data
        ):
            raise ExecError("'input' must be a list of byte values (0-255)")
        runtime = _runtime(task.get("runtime")) or _runtime(self.defaults.get("runtime"))
        limit = _timeout(task.get("runtime")) or _limit()
        interpreter = _python(runtime) if language == "python" else _shell(runtime)
        out, err, status = _run([interpreter, "-c", code], bytes(data), limit, language)
        if status != 0:
            how = f"exited with code {status}" if status > 0 else f"was killed by signal {-status}"
            raise ExecError(f"the {language} script {how}{_stderr(err)}")
        return json.dumps({"data": list(out)}).encode()


def _run(command: list[str], stdin: bytes, limit: float, language: str) -> tuple[bytes, bytes, int]:
    """Run ``command`` in the working directory; (stdout, stderr, exit status)."""
    # The script gets a process group of its own, so that running out of time
    # ends everything it started; it dies with the instance (setpriv's pdeathsig).
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
            out, err = proc.communicate(stdin, timeout=limit)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
            raise ExecError(
                f"the {language} script ran out of time ({limit:g}s) and was killed{_stderr(err)}"
            ) from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # whatever it left running
    return out, err, proc.returncode


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
