"""The executor side of the Runner on a real Flame cluster.

Every Flame cluster (0.6 and later) registers the ``flmrun`` application with the
command ``python -m flamepy.runner.runpy``, run in the cluster's Python environment
(flame-server-semantics.md A5).  With this package and ``flmrun`` installed there,
that command runs our flmrun (``python -m flmrun``): batching, nested futures,
typed exceptions and inline results, on the cluster's own flmrun application.

Without flmrun, it exits with status 2 and says what to install.
"""

from __future__ import annotations

import sys

from flamepy._hints import install_hint

MISSING_FLMRUN = (
    "flamepy.runner.runpy: the Runner's executor side is the 'flmrun' package, which is "
    "not installed in this Python environment ({python}); install it there, next to "
    "flamepy: " + install_hint("flmrun") + "; on a cluster's executors, docs/deploy.md"
)


def main(argv: list[str] | None = None) -> int:
    """Serve Runner requests with flmrun; returns the exit status."""
    try:
        from flmrun.__main__ import main as flmrun_main
    except ImportError as exc:
        if exc.name not in ("flmrun", "flmrun.__main__"):
            raise
        print(MISSING_FLMRUN.format(python=sys.executable), file=sys.stderr)
        return 2
    return flmrun_main(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
