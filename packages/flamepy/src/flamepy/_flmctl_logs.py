"""``flmctl logs``: the log files of a local cluster's instances.

A Flame executor manager sends an instance's stdout and stderr to
``<executor_id>.out`` and ``.err`` on its own node (flame-wire.md §5.2), where no
client can read them.  A local cluster (flame-testkit) keeps them in
``<work dir>/logs`` and links that directory from its owner-only runtime
directory, beside its socket or token file; that is how ``flmctl`` finds them.
"""

from __future__ import annotations

import os
import time
from collections import deque
from pathlib import Path

import flamepy
from flamepy._config import unix_socket_path
from flamepy._errors import InvalidArgumentError, NotFoundError

LOGS_LINK = "logs"
"""The name of the link to the logs directory in a local cluster's runtime directory."""
DEFAULT_TAIL = 100


def logs_dir(endpoint: str | None, explicit: str | None = None) -> Path:
    """The logs directory of the local cluster at ``endpoint`` (or the configured one)."""
    if explicit:
        found = Path(explicit)
        if not found.is_dir():
            raise NotFoundError(f"{found} is not a directory")
        return found
    ctx = flamepy.FlameContext()
    url = endpoint or ctx.configured_endpoint or os.environ.get("FLAME_ENDPOINT")
    candidates = []
    socket = unix_socket_path(url) if url else None
    if socket is not None:
        candidates.append(Path(socket).parent / LOGS_LINK)
    token_file = ctx.cluster.token_file
    if token_file:
        candidates.append(Path(token_file).parent / LOGS_LINK)
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    where = url or "no configured endpoint"
    raise NotFoundError(
        f"no instance logs found for {where}: flmctl shows the logs of a local cluster "
        "(flame-local up) only, found through its Unix socket or token file; a Flame "
        "cluster keeps them on each executor's node, as <process dir>/<executor id>.out "
        "and .err; or name a logs directory with --dir"
    )


def list_logs(directory: Path) -> str:
    """The instances with logs, newest first."""
    rows = []
    for out in directory.glob("*.out"):
        err = out.with_suffix(".err")
        info = out.stat()
        size = info.st_size + (err.stat().st_size if err.exists() else 0)
        rows.append((info.st_mtime, out.stem, size))
    if not rows:
        return f"no instance logs in {directory}"
    rows.sort(reverse=True)
    lines = [f"{'EXECUTOR':<40} {'BYTES':>10}  LAST WRITTEN"]
    for mtime, name, size in rows:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(mtime))
        lines.append(f"{name:<40} {size:>10}  {when}")
    return "\n".join(lines)


def show_logs(directory: Path, executor: str, tail: int = DEFAULT_TAIL) -> str:
    """The last ``tail`` lines (0: all) of an instance's stdout and stderr; ``executor``
    may be a unique prefix of its id."""
    if tail < 0:
        raise InvalidArgumentError(f"--tail {tail}: give a number of lines, 0 for all")
    if "/" in executor or executor.startswith("."):
        raise InvalidArgumentError(f"{executor!r} is not an executor id")
    names = sorted({p.stem for p in directory.glob(f"{executor}*") if p.suffix in (".out", ".err")})
    if not names:
        raise NotFoundError(
            f"no logs of an executor {executor!r} in {directory}; 'flmctl logs' lists them"
        )
    if len(names) > 1 and executor not in names:
        raise InvalidArgumentError(f"{executor!r} names several executors: {', '.join(names)}")
    name = executor if executor in names else names[0]
    parts = []
    for suffix in (".out", ".err"):
        path = directory / f"{name}{suffix}"
        if not path.exists():
            continue
        parts.append(f"==> {path} <==")
        with path.open(encoding="utf-8", errors="replace") as fh:
            kept = deque(fh, maxlen=tail) if tail else list(fh)
        parts.append("".join(kept).rstrip("\n"))
    return "\n".join(parts)
