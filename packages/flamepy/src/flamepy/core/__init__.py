"""Compatibility path of Flame's SDK: ``flamepy.core`` re-exports the client API.

``flamepy.core.cache`` (the object cache client and ``ObjectRef``) keeps this
module path because pickles name it.  The re-export is lazy, since ``flamepy``
itself imports ``flamepy.core.cache``.
"""

from __future__ import annotations

from typing import Any

EXTRA = ("WILDCARD_SESSION", "short_name")
"""Names 0.6's ``flamepy.core`` has beyond ``flamepy``'s."""


def __getattr__(name: str) -> Any:
    import flamepy

    if name == "__all__":
        return [*flamepy.__all__, *EXTRA]
    if name == "WILDCARD_SESSION":
        from flamepy.core.cache import WILDCARD_SESSION

        return WILDCARD_SESSION
    if name == "short_name":
        from flamepy.util import short_name

        return short_name
    if name in flamepy.__all__:
        return getattr(flamepy, name)
    raise AttributeError(f"module 'flamepy.core' has no attribute {name!r}")
