"""Service sessions of Flame's SDK (``flamepy.service``): Python values in and out.

* :class:`FlameInstance` is the instance side: an ``@instance.entrypoint``
  function, the session's context (:meth:`~FlameInstance.context`,
  :meth:`~FlameInstance.update_context`) and :meth:`~FlameInstance.run`, which
  serves it with flmrun.
* :class:`Session` is the client side (:class:`AsyncSession` for asyncio):
  ``invoke(value)``, ``context()``, ``id()``, ``close()``.

On the wire (flame-runner-wire.md §9) task input and output are
``cloudpickle(value)``, and the session's common data is the BSON ObjectRef of
``cloudpickle(ctx)`` in the object cache, so both sides interoperate with
Flame's own SDK.
"""

from flamepy.service.client import AsyncSession, Session
from flamepy.service.instance import FlameInstance

__all__ = ["AsyncSession", "FlameInstance", "Session"]
