"""``flmctl``: inspect and manage a Flame cluster from the command line.

Built only on flamepy's public synchronous API.  ``--endpoint URL`` opens a
connection to that session manager; without it the flamepy configuration
(FLAME_ENDPOINT, flame.yaml) is used, and with nothing configured flamepy starts
an embedded local cluster.

    flmctl list -a | -s | -e | -n       applications, sessions, executors, nodes
    flmctl list -t -s ID                tasks of a session
    flmctl view -a NAME                 one application
    flmctl view -s ID [-t TASK_ID]      one session (or one of its tasks)
    flmctl close -s ID                  close a session
"""

from __future__ import annotations

import argparse
import enum
import os
import shlex
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

import flamepy
from flamepy._flmctl_logs import DEFAULT_TAIL, list_logs, logs_dir, show_logs

PROG = "flmctl"
NONE = "-"
_MEMORY_UNITS = ("", "Ki", "Mi", "Gi", "Ti", "Pi")


class _Client(Protocol):
    """The calls flmctl needs: both a ``flamepy.Connection`` and the ``flamepy`` module."""

    def list_applications(self) -> list[flamepy.Application]: ...
    def get_application(self, name: str) -> flamepy.Application | None: ...
    def list_sessions(self) -> list[flamepy.Session]: ...
    def get_session(self, session_id: str) -> flamepy.Session: ...
    def close_session(self, session_id: str) -> flamepy.Session: ...
    def list_executors(self) -> list[flamepy.Executor]: ...
    def list_nodes(self) -> list[flamepy.Node]: ...


# -- formatting ------------------------------------------------------------------------


def fmt_time(value: datetime | None) -> str:
    """A timestamp as local ``YYYY-MM-DD HH:MM:SS`` (``-`` when unset)."""
    if value is None:
        return NONE
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def fmt_memory(size: int) -> str:
    """Bytes in the largest binary unit reached: ``16Gi``, ``23.5Gi``, ``512``."""
    unit = 0
    while unit < len(_MEMORY_UNITS) - 1 and size >= 1024 ** (unit + 1):
        unit += 1
    value = size / 1024**unit
    text = f"{value:.0f}" if value == int(value) else f"{value:.1f}"
    return f"{text}{_MEMORY_UNITS[unit]}"


def fmt_size(data: Any) -> str:
    return NONE if data is None else f"{len(data)} byte{'' if len(data) == 1 else 's'}"


def fmt_value(value: Any) -> str:
    """One attribute value on one line."""
    if value is None:
        return NONE
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, dict):
        return ", ".join(f"{k}={v}" for k, v in sorted(value.items())) or NONE
    if isinstance(value, list):
        return ", ".join(str(v) for v in value) or NONE
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """An aligned table: upper-case header, columns padded to the widest cell."""
    lines = [[h.upper() for h in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def key_values(pairs: Sequence[tuple[str, object]]) -> str:
    """``key: value`` lines with the keys padded so that the values line up."""
    width = max(len(key) for key, _ in pairs) + 1
    return "\n".join(f"{key + ':':<{width}} {fmt_value(value)}".rstrip() for key, value in pairs)


def events_block(events: Sequence[flamepy.Event] | None, task: bool = False) -> str:
    """The ``events:`` section: code, time and the full message (continuations indented).

    Task event codes are task states, so they are shown with the state's name.
    """
    if not events:
        return "events: -"
    rows = [(_event_code(e.code, task), fmt_time(e.creation_time)) for e in events]
    code_w = max(len("CODE"), *(len(c) for c, _ in rows))
    time_w = max(len("TIME"), *(len(t) for _, t in rows))
    indent = "  "
    lines = ["events:", f"{indent}{'CODE':<{code_w}}  {'TIME':<{time_w}}  MESSAGE"]
    pad = " " * (len(indent) + code_w + 2 + time_w + 2)
    for (code, when), event in zip(rows, events, strict=True):
        text = (event.message or NONE).splitlines() or [NONE]
        lines.append(f"{indent}{code:<{code_w}}  {when:<{time_w}}  {text[0]}".rstrip())
        lines.extend(f"{pad}{more}".rstrip() for more in text[1:])
    return "\n".join(lines)


def _event_code(code: int, task: bool) -> str:
    try:
        return f"{code} ({flamepy.TaskState(code).name})" if task else str(code)
    except ValueError:
        return str(code)


def command_line(app: flamepy.Application) -> str:
    if not app.command:
        return NONE
    return shlex.join([app.command, *(app.arguments or [])])


# -- commands --------------------------------------------------------------------------


def list_applications(client: _Client) -> str:
    apps = sorted(client.list_applications(), key=lambda a: a.name)
    rows = [
        (a.name, fmt_value(a.shim), a.state.name, fmt_time(a.creation_time), command_line(a))
        for a in apps
    ]
    return table(("name", "shim", "state", "created", "command"), rows)


def _session_row(s: flamepy.Session) -> tuple[object, ...]:
    counters = (s.pending, s.running, s.succeed, s.failed, s.cancelled)
    return (s.id, s.application, s.state.name, fmt_time(s.creation_time), *counters)


def list_sessions(client: _Client, session_id: str | None) -> str:
    if session_id:
        sessions = [client.get_session(session_id)]
    else:
        sessions = sorted(client.list_sessions(), key=lambda s: (s.creation_time, s.id))
    header = ("id", "app", "state", "created", "pending", "running", "succeed", "failed")
    return table((*header, "cancelled"), [_session_row(s) for s in sessions])


def list_executors(client: _Client) -> str:
    rows = [
        (e.id, e.node, e.state.name, e.session_id or NONE)
        for e in sorted(client.list_executors(), key=lambda e: (e.node, e.id))
    ]
    return table(("id", "node", "state", "session"), rows)


def list_nodes(client: _Client) -> str:
    rows = [
        (
            n.name,
            n.state.name,
            n.capacity.cpu,
            fmt_memory(n.capacity.memory),
            n.arch or NONE,
            n.os or NONE,
        )
        for n in sorted(client.list_nodes(), key=lambda n: n.name)
    ]
    return table(("name", "state", "cpu", "memory", "arch", "os"), rows)


def list_tasks(client: _Client, session_id: str) -> str:
    session = client.get_session(session_id)
    tasks = sorted(session.list_tasks(), key=lambda t: (t.creation_time, _task_key(t.id)))
    rows = [
        (t.id, t.state.name, fmt_time(t.creation_time), fmt_time(t.completion_time)) for t in tasks
    ]
    return table(("id", "state", "created", "completed"), rows)


def _task_key(task_id: str) -> tuple[int, str]:
    return (int(task_id), "") if task_id.isdigit() else (sys.maxsize, task_id)


def view_application(client: _Client, name: str) -> str:
    app = client.get_application(name)
    if app is None:
        raise flamepy.NotFoundError(f"application {name!r} not found")
    pairs: list[tuple[str, object]] = [
        ("name", app.name),
        ("state", app.state),
        ("created", fmt_time(app.creation_time)),
        ("shim", app.shim),
        ("image", app.image),
        ("description", app.description),
        ("command", app.command),
        ("arguments", shlex.join(app.arguments) if app.arguments else None),
        ("environments", app.environments),
        ("working_directory", app.working_directory),
        ("url", app.url),
        ("installer", app.installer),
        ("max_instances", app.max_instances),
        ("delay_release", app.delay_release),
        ("labels", app.labels),
    ]
    return key_values(pairs)


def view_session(client: _Client, session_id: str) -> str:
    s = client.get_session(session_id)
    resreq = s.resreq
    pairs: list[tuple[str, object]] = [
        ("id", s.id),
        ("application", s.application),
        ("state", s.state),
        ("created", fmt_time(s.creation_time)),
        ("completed", fmt_time(s.completion_time)),
        ("min_instances", s.min_instances),
        ("max_instances", s.max_instances),
        (
            "resreq",
            resreq and f"cpu={resreq.cpu}, mem={fmt_memory(resreq.memory)}, gpu={resreq.gpu}",
        ),
        ("pending", s.pending),
        ("running", s.running),
        ("succeed", s.succeed),
        ("failed", s.failed),
        ("cancelled", s.cancelled),
    ]
    return key_values(pairs) + "\n" + events_block(s.events)


def view_task(client: _Client, session_id: str, task_id: str) -> str:
    task = client.get_session(session_id).get_task(task_id)
    pairs: list[tuple[str, object]] = [
        ("id", task.id),
        ("session", task.session_id or session_id),
        ("state", task.state.name),
        ("created", fmt_time(task.creation_time)),
        ("completed", fmt_time(task.completion_time)),
        ("input", fmt_size(task.input)),
        ("output", fmt_size(task.output)),
    ]
    return key_values(pairs) + "\n" + events_block(task.events, task=True)


def close_session(client: _Client, session_id: str) -> str:
    session = client.close_session(session_id)
    return f"session {session.id or session_id} closed"


# -- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Inspect and manage a Flame cluster.")
    parser.add_argument(
        "--endpoint",
        metavar="URL",
        help="session manager URL (default: FLAME_ENDPOINT or flame.yaml; "
        "with nothing configured, an embedded local cluster)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p_list = sub.add_parser("list", help="list applications, sessions, executors, nodes or tasks")
    p_list.add_argument("-a", "--application", action="store_true", help="applications")
    sessions_help = "sessions (with ID: only that session; with -t: its tasks)"
    p_list.add_argument("-s", "--session", nargs="?", const="", metavar="ID", help=sessions_help)
    p_list.add_argument("-e", "--executor", action="store_true", help="executors")
    p_list.add_argument("-n", "--node", action="store_true", help="nodes")
    p_list.add_argument("-t", "--task", action="store_true", help="tasks of the session -s ID")

    p_view = sub.add_parser("view", help="show one application, session or task")
    which = p_view.add_mutually_exclusive_group(required=True)
    which.add_argument("-a", "--application", metavar="NAME", help="the application NAME")
    which.add_argument("-s", "--session", metavar="ID", help="the session ID")
    p_view.add_argument("-t", "--task", metavar="TASK_ID", help="a task of the session -s ID")

    p_close = sub.add_parser("close", help="close a session")
    p_close.add_argument("-s", "--session", metavar="ID", required=True, help="the session ID")

    p_logs = sub.add_parser("logs", help="show an instance's log (a local cluster's)")
    p_logs.add_argument("executor", nargs="?", metavar="EXECUTOR_ID", help="(a prefix of) its id")
    p_logs.add_argument(
        "--tail", type=int, default=DEFAULT_TAIL, metavar="N", help="last N lines (0: all)"
    )
    p_logs.add_argument("--dir", metavar="DIR", help="the logs directory (default: found)")

    parser.set_defaults(subparsers={"list": p_list, "view": p_view})
    return parser


def _check(args: argparse.Namespace) -> None:
    """Validate option combinations that argparse cannot express (exits 2)."""
    if args.command == "list":
        p: argparse.ArgumentParser = args.subparsers["list"]
        if args.task:
            if not args.session or args.application or args.executor or args.node:
                p.error("-t lists the tasks of one session: use 'list -t -s ID'")
            return
        chosen = [args.application, args.session is not None, args.executor, args.node]
        if sum(chosen) != 1:
            p.error("choose exactly one of -a, -s, -e, -n (or -t -s ID)")
    elif args.command == "view" and args.task is not None and args.session is None:
        args.subparsers["view"].error("-t TASK_ID needs the session: use 'view -s ID -t TASK_ID'")


def run(args: argparse.Namespace, client: _Client) -> str:
    if args.command == "list":
        if args.task:
            return list_tasks(client, args.session)
        if args.application:
            return list_applications(client)
        if args.executor:
            return list_executors(client)
        if args.node:
            return list_nodes(client)
        return list_sessions(client, args.session or None)
    if args.command == "view":
        if args.application is not None:
            return view_application(client, args.application)
        if args.task is not None:
            return view_task(client, args.session, args.task)
        return view_session(client, args.session)
    return close_session(client, args.session)


def _which_cluster(endpoint: str | None) -> str:
    """Which cluster this run talks to, and where that came from."""
    if endpoint:
        return f"{endpoint} (--endpoint)"
    ctx = flamepy.FlameContext()
    if ctx.configured_endpoint is None:
        return "a throwaway embedded local cluster (no endpoint is configured)"
    source = "FLAME_ENDPOINT" if os.environ.get("FLAME_ENDPOINT") else f"{ctx.path}"
    if ctx.context_name and not os.environ.get("FLAME_ENDPOINT"):
        source += f", context {ctx.context_name}"
    return f"{ctx.configured_endpoint} ({source})"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        _check(args)
    except SystemExit as exc:  # usage errors (2) and --help (0)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    conn: flamepy.Connection | None = None
    try:
        print(f"{PROG}: cluster {_which_cluster(args.endpoint)}", file=sys.stderr)
        if args.command == "logs":  # files on this machine: no connection
            directory = logs_dir(args.endpoint, args.dir)
            if args.executor:
                print(show_logs(directory, args.executor, args.tail))
            else:
                print(list_logs(directory))
            return 0
        client: _Client
        if args.endpoint:
            client = conn = flamepy.connect(args.endpoint)
        else:
            client = flamepy
        print(run(args, client))
    except flamepy.FlameError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        if conn is not None:
            conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
