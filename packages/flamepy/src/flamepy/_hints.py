"""Install hints: commands that work for the packages of this release.

flmrun and flame-testkit are not on PyPI (and PyPI's ``flamepy`` is Flame's own
SDK), so a hint names the wheels of this release, or the folders of a checkout of
the repository; both are tested by ``nox -s install`` (docs/install.md).
"""

from __future__ import annotations

VERSION = "0.1.0"
"""The release of flamepy, flmrun and flame-testkit (they are versioned together)."""


def install_hint(*names: str) -> str:
    """The commands that install ``names`` (``flmrun``, ``flame-testkit``) next to flamepy."""
    wheels = " ".join(f"{name.replace('-', '_')}-{VERSION}-py3-none-any.whl" for name in names)
    folders = " ".join(f"./packages/{name}" for name in ("flamepy", *names))
    return (
        f"pip install {wheels} (the wheels of this release), or from a checkout of the "
        f"repository: pip install {folders} (see docs/install.md)"
    )
