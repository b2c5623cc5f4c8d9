"""Install hints name commands that work (issue "see and steer", item 5).

The commands themselves run in ``nox -s install`` (docs/install.md); here, that the
hints name this release and no package index name that does not exist.
"""

from __future__ import annotations

from importlib.metadata import version

import flamepy
from flamepy._embedded import NO_ENDPOINT
from flamepy._hints import VERSION, install_hint
from flamepy.runner.runpy import MISSING_FLMRUN


def test_the_hints_name_this_release() -> None:
    assert VERSION == flamepy.__version__ == version("flamepy") == version("flmrun")
    assert version("flame-testkit") == VERSION


def test_the_hints_name_wheels_and_folders_not_an_index() -> None:
    hint = install_hint("flmrun", "flame-testkit")
    assert (
        f"pip install flmrun-{VERSION}-py3-none-any.whl flame_testkit-{VERSION}-py3-none-any.whl"
        in hint
    )
    assert "pip install ./packages/flamepy ./packages/flmrun ./packages/flame-testkit" in hint
    for message in (NO_ENDPOINT, MISSING_FLMRUN):
        assert "flamepy[local]" not in message
        assert "pip install flmrun " not in message and "pip install flmrun," not in message
        assert "docs/install.md" in message
