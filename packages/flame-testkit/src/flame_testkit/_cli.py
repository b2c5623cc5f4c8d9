"""``flame-local``: run a local Flame cluster.

* ``flame-local up``: run one in the foreground and print its endpoints.
* ``flame-local run -- CMD ...``: start one, run CMD with FLAME_ENDPOINT (and
  FLAME_CACHE_ENDPOINT) set, tear it down, and exit with CMD's status.
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
from flame_testkit._executor import DEFAULT_CAPACITY


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flame-local", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("up", "run a local cluster in the foreground"),
        ("run", "run a command against a fresh local cluster"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
        p.add_argument("--port", type=int, default=0, help="Frontend port (default: a free port)")
        p.add_argument(
            "--capacity",
            type=int,
            default=DEFAULT_CAPACITY,
            help=f"instances this node may run at once (default: CPU count, {DEFAULT_CAPACITY})",
        )
        p.add_argument("--work-dir", type=Path, default=None, help="instance and log directory")
        p.add_argument("--delay-release", type=int, default=None, help="idle release delay (s)")
        if name == "run":
            p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")
    return parser


def _config(args: argparse.Namespace) -> LocalClusterConfig:
    if args.capacity < 1:
        raise SystemExit("flame-local: --capacity must be at least 1")
    return LocalClusterConfig(
        host=args.host,
        port=args.port,
        capacity=args.capacity,
        work_dir=args.work_dir,
        delay_release=args.delay_release,
        cache_local_transfer=True,  # clients on this host hand over large payloads as files
    )


def _print_endpoints(endpoint: str, cache: str | None) -> None:
    print(f"FLAME_ENDPOINT={endpoint}", flush=True)
    if cache:
        print(f"FLAME_CACHE_ENDPOINT={cache}", flush=True)


async def _up(config: LocalClusterConfig) -> None:
    cluster = LocalCluster(config)
    await cluster.start()
    try:
        _print_endpoints(cluster.endpoint, cluster.cache_endpoint)
        print("local Flame cluster is up; press Ctrl-C to stop", file=sys.stderr, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
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
        env = dict(os.environ, FLAME_ENDPOINT=cluster.endpoint)
        if cluster.cache_endpoint:
            env["FLAME_CACHE_ENDPOINT"] = cluster.cache_endpoint
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
    if args.command == "up":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_up(config))
        return 0
    return _run(config, args.cmd)


if __name__ == "__main__":
    sys.exit(main())
