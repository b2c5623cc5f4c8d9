"""Peer scenario: dump the compiled descriptors of flamepy 0.6.0's ``flamepy.proto``.

Prints ``{"files": {"types"|"frontend"|"shim": describe_file(...)}, "protobuf": version}``.
"""

from __future__ import annotations

import google.protobuf
from _common import emit
from _descriptor_json import describe_modules

from flamepy.proto import frontend_pb2, shim_pb2, types_pb2


def main() -> None:
    modules = {"types": types_pb2, "frontend": frontend_pb2, "shim": shim_pb2}
    emit({"files": describe_modules(modules), "protobuf": google.protobuf.__version__})


if __name__ == "__main__":
    main()
