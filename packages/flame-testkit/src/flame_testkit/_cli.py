"""``flame-local``: run a local Flame cluster.

* ``flame-local up``: run one in the foreground and print its endpoints.
* ``flame-local run -- CMD ...``: start one, run CMD with FLAME_ENDPOINT (and
  FLAME_CACHE_ENDPOINT) set, tear it down, and exit with CMD's status.

Both serve on Unix sockets in an owner-only directory by default: no other account
on the machine can reach the cluster.  ``--host``/``--port`` serve on TCP instead,
which requires an access token (written to a 0600 file whose path is printed as
FLAME_TOKEN_FILE) unless ``--no-auth`` is given.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from flame_testkit._cluster import ClusterThread, LocalCluster, LocalClusterConfig
from flame_testkit._errors import ClusterConfigError
from flame_testkit._executor import DEFAULT_CAPACITY
from flamepy._auth import read_token_file
from flamepy._errors import ConfigError

NO_AUTH_WARNING = """\
WARNING: --no-auth: this cluster accepts requests from anyone who can reach {where}.
Any program that can connect (every account on this machine{beyond}) can register an
application, which is a command line, and so run commands as {user}; it can also read
and replace every cached object, and pickled objects run code when they are loaded.
Use it only for a peer that cannot send a token, and stop the cluster when done."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flame-local", description="Run a local Flame cluster.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("up", "run a local cluster in the foreground"),
        ("run", "run a command against a fresh local cluster"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument(
            "--host",
            default=None,
            help="serve on TCP at this address (default: owner-only Unix sockets; "
            "with only --port, 127.0.0.1)",
        )
        p.add_argument(
            "--port", type=int, default=0, help="serve the Frontend on this TCP port (0: free)"
        )
        p.add_argument(
            "--token-file",
            type=Path,
            default=None,
            help="TCP: require the token stored in this file (default: a new random token)",
        )
        p.add_argument(
            "--no-auth",
            action="store_true",
            help="TCP: accept requests without a token (anyone who can connect can run "
            "commands as you)",
        )
        p.add_argument(
            "--no-local-transfer",
            action="store_true",
            help="clients on this host send payloads over Flight only, as to a real cluster "
            "(default: large ones as files in /dev/shm)",
        )
        p.add_argument("--tls-cert", type=Path, default=None, help="TCP: PEM certificate chain")
        p.add_argument("--tls-key", type=Path, default=None, help="TCP: PEM private key")
        p.add_argument(
            "--capacity",
            type=int,
            default=DEFAULT_CAPACITY,
            help=f"instances this node may run at once (default: CPU count, {DEFAULT_CAPACITY})",
        )
        p.add_argument("--work-dir", type=Path, default=None, help="instance and log directory")
        p.add_argument("--delay-release", type=int, default=None, help="idle release delay (s)")
        p.add_argument(
            "--dashboard",
            action="store_true",
            help="serve the dashboard on 127.0.0.1, with a token in its URL (needs "
            "flame-testkit[dashboard])",
        )
        p.add_argument(
            "--dashboard-port", type=int, default=0, help="the dashboard's port (0: free)"
        )
        if name == "run":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    return parser


def _config(args: argparse.Namespace) -> LocalClusterConfig:
    if args.capacity < 1:
        raise SystemExit("flame-local: --capacity must be at least 1")
    tcp = args.host is not None or args.port != 0
    if not tcp:
        for flag, value in (
            ("--no-auth", args.no_auth),
            ("--token-file", args.token_file),
            ("--tls-cert", args.tls_cert),
            ("--tls-key", args.tls_key),
        ):
            if value:
                raise SystemExit(
                    f"flame-local: {flag} applies to TCP only: add --port (and --host); "
                    "the default Unix sockets are owner-only without a token"
                )
    token = None
    if args.token_file is not None:
        if args.no_auth:
            raise SystemExit("flame-local: give --token-file or --no-auth, not both")
        try:
            token = read_token_file(args.token_file)
        except ConfigError as exc:
            raise SystemExit(f"flame-local: {exc}") from None
    try:
        return LocalClusterConfig(
            host=args.host,
            port=args.port,
            capacity=args.capacity,
            work_dir=args.work_dir,
            delay_release=args.delay_release,
            dashboard=args.dashboard or args.dashboard_port != 0,
            dashboard_port=args.dashboard_port,
            # clients on this host hand over large payloads as files, unless asked not to
            cache_local_transfer=not args.no_local_transfer,
            token=token,
            no_auth=args.no_auth,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
    except ClusterConfigError as exc:
        raise SystemExit(f"flame-local: {exc}") from None


def _print_endpoints(cluster: LocalCluster) -> None:
    env = cluster.client_env({})
    for key in ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT", "FLAME_TOKEN_FILE", "FLAME_CA_FILE"):
        if key in env:
            print(f"{key}={env[key]}", flush=True)
    _warn_no_auth(cluster)


def _warn_no_auth(cluster: LocalCluster) -> None:
    if cluster.config.no_auth:
        host = cluster.config.bind_host
        beyond = "" if host in ("127.0.0.1", "localhost", "::1") else ", and the network"
        print(
            NO_AUTH_WARNING.format(where=cluster.endpoint, beyond=beyond, user=_user()),
            file=sys.stderr,
            flush=True,
        )


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):  # pragma: no cover - no passwd entry
        return f"uid {os.geteuid()}"


async def _up(config: LocalClusterConfig) -> None:
    # The handlers come first: a signal right after the endpoints are printed (or
    # during the start) must still stop the cluster cleanly, leaving nothing behind.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    cluster = LocalCluster(config)
    try:
        await cluster.start()
        _print_endpoints(cluster)
        if cluster.dashboard_url is not None:
            print(f"dashboard: {cluster.dashboard_url}", file=sys.stderr, flush=True)
        kept = "kept" if config.work_dir is not None else "removed when it stops"
        print(
            f"instance logs: {cluster.logs_dir} ({kept}; 'flmctl logs' shows them)",
            file=sys.stderr,
            flush=True,
        )
        print("local Flame cluster is up; press Ctrl-C to stop", file=sys.stderr, flush=True)
        await stop.wait()
    finally:
        await cluster.stop()


def _run(config: LocalClusterConfig, cmd: list[str]) -> int:
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        print(
            "flame-local run: no command given; usage: flame-local run -- CMD [ARGS...]",
            file=sys.stderr,
        )
        return 2
    with ClusterThread(config) as cluster:
        env = cluster.client_env()
        _warn_no_auth(cluster.cluster)
        try:
            proc = subprocess.Popen(cmd, env=env)
        except OSError as exc:
            print(f"flame-local run: cannot start {cmd[0]!r}: {exc.strerror}", file=sys.stderr)
            return 127
        try:
            return proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                return proc.wait(10)
            proc.kill()
            return proc.wait()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    config = _config(args)
    try:
        LocalCluster.check_work_dir(config)
    except ClusterConfigError as exc:
        print(f"flame-local: {exc}", file=sys.stderr)
        return 2
    if args.command == "up":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_up(config))
        return 0
    return _run(config, args.cmd)


if __name__ == "__main__":
    sys.exit(main())
