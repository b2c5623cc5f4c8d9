"""The object cache client, in one place.

* ``client``: the Arrow Flight client (``CacheClient``): puts, gets with patches,
  listings, uploads and downloads, mapped to flamepy's errors at the boundary;
* ``codec``: the wire encodings of values (flame-cache.md §3, §5): opaque payloads,
  native tables, tensors and arrays;
* ``local``: same-host transfers, payloads handed over as files on /dev/shm;
* ``maps``: the mappings a writer keeps of the files it wrote;
* ``inproc``: a cache served by this very process, called directly;
* ``copying``: the two-core copy of large buffers and huge-page advice;
* ``memory``: keeping freed heap for reuse around large values.

``flamepy.cache`` and ``flamepy.core.cache`` are the public API on top.
"""
