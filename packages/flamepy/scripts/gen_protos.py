"""Regenerate flamepy's committed gRPC stubs from ``packages/flamepy/protos``.

Usage: ``python packages/flamepy/scripts/gen_protos.py [OUT_DIR]``

The protos import ``types.proto`` by its bare name, exactly as Flame's own files do,
so the descriptor file names match a real cluster's. protoc then emits
``import types_pb2``; we rewrite that to a package-relative import so the stubs
live inside ``flamepy.proto``.  ``tests/test_proto_stubs.py`` regenerates into a
temporary directory and fails if the committed files differ.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
PROTO_DIR = PACKAGE_DIR / "protos"
DEFAULT_OUT = PACKAGE_DIR / "src" / "flamepy" / "proto"
PROTOS = ("types.proto", "frontend.proto", "shim.proto")
HEADER = (
    '"""Generated gRPC stubs for the flame.v1 protocol. '
    'Do not edit: run scripts/gen_protos.py."""\n'
)

_BARE_IMPORT = re.compile(r"^import (types_pb2|frontend_pb2|shim_pb2) as ", re.MULTILINE)
_BARE_FROM = re.compile(r"^from (types_pb2|frontend_pb2|shim_pb2) import ", re.MULTILINE)
_BARE_IMPORT_PYI = re.compile(r"^import (types_pb2|frontend_pb2|shim_pb2)$", re.MULTILINE)


def generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # dev-only dependency

    out_dir.mkdir(parents=True, exist_ok=True)
    include = Path(protoc.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTOS,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    # types.proto declares no service, so its *_grpc module would be empty.
    (out_dir / "types_pb2_grpc.py").unlink(missing_ok=True)
    written = []
    for path in sorted(out_dir.glob("*_pb2*.py*")):
        text = path.read_text()
        text = _BARE_IMPORT.sub(r"from . import \1 as ", text)
        text = _BARE_FROM.sub(r"from .\1 import ", text)
        text = _BARE_IMPORT_PYI.sub(r"from . import \1", text)
        path.write_text(text)
        written.append(path)
    (out_dir / "__init__.py").write_text(HEADER)
    written.append(out_dir / "__init__.py")
    return written


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_OUT
    for path in generate(out):
        print(path)


if __name__ == "__main__":
    main()
