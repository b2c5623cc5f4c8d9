"""The Host-shim launch contract (flame-wire.md §5.2): how one instance is started.

Environment, ``$VAR`` expansion, directories, a new process group, captured
stdout/stderr, and termination (SIGTERM to the group, SIGKILL after a grace
period: the real executor sends only SIGTERM, we make sure nothing survives).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import shutil
import signal
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flamepy.proto import types_pb2

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
STDERR_TAIL_BYTES = 2000
PR_SET_PDEATHSIG = 1


def expand(text: str, *scopes: Mapping[str, str]) -> str:
    """Expand ``$VAR`` and ``${VAR}``; unknown variables are left as they are."""

    def _sub(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        for scope in scopes:
            if name in scope:
                return scope[name]
        return match.group(0)

    return _VAR.sub(_sub, text)


def instance_environment(
    spec: types_pb2.ApplicationSpec,
    base: Mapping[str, str],
    *,
    socket_path: Path,
    frontend_endpoint: str,
    cache_endpoint: str | None,
    ca_file: str | None,
    log_level: str,
    app_dir: Path,
    installer_env: Mapping[str, str] | None = None,
    token_file: str | None = None,
) -> dict[str, str]:
    """The child's environment: ``base`` plus the contract's variables, in spec order.

    ``token_file``: the cluster's access token file (``FLAME_TOKEN_FILE``); a token
    meant for another cluster is never passed on."""
    env: dict[str, str] = {}
    for item in spec.environments:  # 1. application environments, expanded once
        env[item.name] = expand(item.value, base)
    env["RUST_LOG"] = log_level  # 2.
    env["FLAME_LOG"] = log_level
    env["FLAME_INSTANCE_ENDPOINT"] = str(socket_path)
    env["FLAME_ENDPOINT"] = frontend_endpoint  # 3.
    if ca_file:
        env["FLAME_CA_FILE"] = ca_file
    if cache_endpoint:
        env["FLAME_CACHE_ENDPOINT"] = cache_endpoint
    if "HOME" not in env and "HOME" in base:  # 4.
        env["HOME"] = base["HOME"]
    for key, value in (installer_env or {}).items():  # 5.
        if key in ("PATH", "PYTHONPATH", "LD_LIBRARY_PATH"):
            # installer:app, and for PATH the executor manager's own after that
            rest = env.get(key) or (base.get(key) if key == "PATH" else None)
            env[key] = f"{value}:{rest}" if rest else value
        else:
            env.setdefault(key, value)
    tmp = str(app_dir / "tmp")
    for key in ("TMPDIR", "TEMP", "TMP"):  # 6.
        env.setdefault(key, tmp)
    merged = {**base, **env}
    merged.pop("FLAME_TOKEN", None)
    merged.pop("FLAME_TOKEN_FILE", None)
    if token_file:
        merged["FLAME_TOKEN_FILE"] = token_file
    return merged


@dataclass
class InstanceDirs:
    process_dir: Path
    app_dir: Path
    keep_process_dir: bool

    @classmethod
    def create(
        cls, spec: types_pb2.ApplicationSpec, app_name: str, work_root: Path, executor_id: str
    ) -> InstanceDirs:
        if spec.HasField("working_directory") and spec.working_directory:
            process_dir, keep = Path(spec.working_directory), True
        else:
            process_dir, keep = work_root / executor_id, False
        app_dir = process_dir / "work" / app_name
        private_dirs(app_dir / "tmp", under=process_dir.parent)
        return cls(process_dir, app_dir, keep)

    def remove(self) -> None:
        shutil.rmtree(self.app_dir, ignore_errors=True)
        if not self.keep_process_dir:
            shutil.rmtree(self.process_dir, ignore_errors=True)


def private_dirs(path: Path, under: Path) -> None:
    """``mkdir -p path`` with every directory it creates below ``under`` made 0700."""
    missing: list[Path] = []
    node = path
    while node != under and not node.exists():
        missing.append(node)
        node = node.parent
    if node != under and not node.exists():  # pragma: no cover - ``under`` is gone
        raise FileNotFoundError(under)
    for item in reversed(missing):
        item.mkdir(mode=0o700, exist_ok=True)


def private_file(path: Path) -> int:
    """Open ``path`` for writing, created (or truncated) owner-only: 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return fd


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGKILL when the launching process dies.

    A local cluster lives inside a user's program; if that program is killed (no
    atexit hooks run), its instances must not live on.  Linux only; elsewhere the
    cluster's normal shutdown is what stops them.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass


async def spawn(
    command: str, args: list[str], *, cwd: Path, env: Mapping[str, str], stdout: Path, stderr: Path
) -> asyncio.subprocess.Process:
    """Start the instance in a new process group with output captured to files.

    Its umask is 077: what an instance writes (packages, payloads, logs) is its
    owner's alone."""
    preexec = None
    if sys.platform == "linux":
        setpriv = shutil.which("setpriv")
        if setpriv:  # util-linux sets the signal and execs: no fork()-time Python code
            command, args = setpriv, ["--pdeathsig", "KILL", "--", command, *args]
        else:
            preexec = _die_with_parent
    with open(private_file(stdout), "wb") as out, open(private_file(stderr), "wb") as err:  # noqa: ASYNC230
        return await asyncio.create_subprocess_exec(
            command,
            *args,
            cwd=str(cwd),
            env=dict(env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            start_new_session=True,
            preexec_fn=preexec,
            umask=0o077,
        )


def _signal_group(pgid: int, sig: signal.Signals) -> bool:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


async def terminate(process: asyncio.subprocess.Process, grace: float) -> int | None:
    """SIGTERM the process group, SIGKILL it after ``grace`` seconds, and reap."""
    pgid = process.pid
    if process.returncode is None:
        _signal_group(pgid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), grace)
        except asyncio.TimeoutError:
            _signal_group(pgid, signal.SIGKILL)
            await process.wait()
    # Anything the instance left behind in its group goes too.
    _signal_group(pgid, signal.SIGKILL)
    return process.returncode


def group_alive(pgid: int) -> bool:
    """True if any process of the group still exists."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - someone else's group
        return True
    return True


def tail(path: Path, limit: int = STDERR_TAIL_BYTES) -> str:
    with contextlib.suppress(OSError):
        size = path.stat().st_size
        with open(path, "rb") as fh:
            fh.seek(max(0, size - limit))
            return fh.read().decode("utf-8", "replace").strip()
    return ""


DEFAULT_KEEPALIVE_MS = 10_000


def keepalive_ms() -> int:
    """Keepalive ping interval of the local cluster's own gRPC links, in ms:
    ``FLAME_KEEPALIVE`` seconds when set to a positive number, else 10 s."""
    raw = os.environ.get("FLAME_KEEPALIVE", "").strip()
    try:
        seconds = float(raw) if raw else 0.0
    except ValueError:
        seconds = 0.0
    return max(100, int(seconds * 1000)) if seconds > 0 else DEFAULT_KEEPALIVE_MS


def process_state(pid: int) -> str | None:
    """The state letter of ``pid`` in /proc (``R``, ``S``, ``T`` for stopped, ...);
    None when it is gone or there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2 :]
    return rest[:1] or None


def prune_logs(directory: Path, keep: int) -> int:
    """Remove the oldest files of ``directory`` beyond the newest ``keep``; returns
    how many went.  A live instance's open log survives on its descriptor."""
    try:
        entries = [(e.stat().st_mtime_ns, e.path) for e in os.scandir(directory) if e.is_file()]
    except OSError:
        return 0
    if len(entries) <= keep:
        return 0
    entries.sort()
    doomed = entries[: len(entries) - keep]
    for _, path in doomed:
        with contextlib.suppress(OSError):
            os.unlink(path)
    return len(doomed)
