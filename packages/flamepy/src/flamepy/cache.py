"""The object cache API under the module path of Flame's SDK, ``flamepy.cache``.

A re-export of :mod:`flamepy.core.cache`, where the classes live (``ObjectRef``
is pickled by that module path).  0.6's ``flamepy.cache`` offers ``ObjectRef``,
``put_object``, ``get_object``, ``update_object``, ``patch_object`` and
``delete_objects``; the file transfers and the ``*_async`` forms are here too.
"""

from __future__ import annotations

from flamepy.core.cache import (
    ObjectRef,
    delete_objects,
    delete_objects_async,
    download_object,
    download_object_async,
    get_object,
    get_object_async,
    patch_object,
    patch_object_async,
    put_object,
    put_object_async,
    update_object,
    update_object_async,
    upload_object,
    upload_object_async,
)

__all__ = [
    "ObjectRef",
    "delete_objects",
    "delete_objects_async",
    "download_object",
    "download_object_async",
    "get_object",
    "get_object_async",
    "patch_object",
    "patch_object_async",
    "put_object",
    "put_object_async",
    "update_object",
    "update_object_async",
    "upload_object",
    "upload_object_async",
]
