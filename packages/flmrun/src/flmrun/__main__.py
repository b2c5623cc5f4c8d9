"""Command line of the instance process: ``python -m flmrun [--service module:ClassName]``.

Without ``--service`` it serves Runner requests (:mod:`flmrun._runpy`).

The executor manager runs this (through the application's ``command``) with
``FLAME_INSTANCE_ENDPOINT`` set. The socket is bound first; only then is ``module``
imported and ``ClassName`` instantiated, so slow imports cannot stall the executor, which
waits for the socket file without a timeout. If the import or the constructor fails, the
process keeps serving and reports the failure as the result of ``OnSessionEnter``.

Exit status: 0 after a SIGTERM/SIGINT shutdown, 2 for usage and configuration errors.
Logging goes to stderr at the level named by ``FLAME_LOG`` (``info``, ``debug``, ...).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable

from flmrun._errors import InstanceConfigError, ServiceLoadError
from flmrun._service import FlameService

__all__ = ["load_service_class", "main", "parse_service_spec"]

_PROG = "flmrun"
DEFAULT_SERVICE = "flmrun._runpy:RunpyService"
"""Without --service, flmrun serves Runner requests (what Flame's ``flmrun`` app runs)."""


def parse_service_spec(spec: str) -> tuple[str, str]:
    """Split ``"package.module:Class"`` (the class part may be dotted) into its two parts."""
    module, sep, attr = spec.partition(":")
    module, attr = module.strip(), attr.strip()
    parts_ok = all(p.isidentifier() for p in module.split(".")) and all(
        p.isidentifier() for p in attr.split(".")
    )
    if not sep or not module or not attr or not parts_ok:
        raise InstanceConfigError(
            f"bad --service {spec!r}: expected 'module:ClassName', e.g. 'myapp.service:MyService'"
        )
    return module, attr


def load_service_class(spec: str) -> type[FlameService]:
    """Import ``module`` and return its FlameService subclass named by ``spec``.

    The current directory is put on ``sys.path`` if it is not there yet, so a module in the
    instance's working directory can be named even when flmrun runs as a console script.
    """
    module_name, attr = parse_service_spec(spec)
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj: object = importlib.import_module(module_name)
    except Exception as exc:
        raise ServiceLoadError(f"cannot import module {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ServiceLoadError(f"{spec!r}: {module_name!r} has no attribute {attr!r}") from exc
    if not isinstance(obj, type) or not issubclass(obj, FlameService):
        raise ServiceLoadError(f"{spec!r} is {obj!r}, not a subclass of flmrun.FlameService")
    return obj


def _service_factory(spec: str) -> Callable[[], FlameService]:
    def build() -> FlameService:
        cls = load_service_class(spec)
        try:
            return cls()
        except Exception as exc:
            raise ServiceLoadError(f"constructing {spec} failed: {exc}") from exc

    return build


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Serve the flame.v1.Instance gRPC service on the Unix socket named by "
            "FLAME_INSTANCE_ENDPOINT, forwarding calls to a flmrun.FlameService."
        ),
    )
    parser.add_argument(
        "--service",
        metavar="MODULE:CLASS",
        help="the FlameService subclass to serve, imported after the socket is bound",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the instance process; returns the exit status."""
    from flmrun._memory import apply_from_env

    try:
        # Before anything starts a thread: a thread's malloc arena is chosen once.
        apply_from_env()
    except ValueError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or an argparse usage error (already printed)
        return exc.code if isinstance(exc.code, int) else 2
    if not args.service:
        args.service = DEFAULT_SERVICE
    try:
        parse_service_spec(args.service)
    except InstanceConfigError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2

    from flmrun._envs import hold_in_use
    from flmrun._server import configure_logging, run

    configure_logging()
    # The installed code and environments this instance runs on stay while it runs.
    hold_in_use(os.environ.get("PYTHONPATH", "").split(os.pathsep))
    try:
        run(_service_factory(args.service))
    except InstanceConfigError as exc:
        print(f"{_PROG}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
