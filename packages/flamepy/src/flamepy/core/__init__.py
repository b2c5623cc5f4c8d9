"""Compatibility path of Flame's SDK: ``flamepy.core`` re-exports the client API.

``flamepy.core.cache`` (the object cache client and ``ObjectRef``) keeps this
module path because pickles name it.
"""

from flamepy import *  # noqa: F403
from flamepy import __all__ as __all__
