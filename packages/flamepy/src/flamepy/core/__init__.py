"""Compatibility path of Flame's SDK: ``flamepy.core`` re-exports the client API.

``flamepy.core.cache`` (the object cache client and ``ObjectRef``) keeps this
module path because pickles name it.  The re-export is lazy, since ``flamepy``
itself imports ``flamepy.core.cache``.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    import flamepy

    if name == "__all__":
        return list(flamepy.__all__)
    if name in flamepy.__all__:
        return getattr(flamepy, name)
    raise AttributeError(f"module 'flamepy.core' has no attribute {name!r}")
