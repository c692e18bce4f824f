"""Regenerate the committed gRPC/protobuf modules in ``a2a_service/v1/`` from ``protos/``.

Usage (from anywhere): ``python -m a2a_service._protogen [--out DIR]``. Equivalent to running
``python -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. --grpc_python_out=.
protos/a2a_service/v1/a2a.proto`` from the repository root.
"""

from __future__ import annotations

import argparse
import re
import sys
from importlib import resources
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
PROTO_FILES = ("a2a_service/v1/a2a.proto",)
GENERATED_FILES = ("a2a_service/v1/a2a_pb2.py", "a2a_service/v1/a2a_pb2.pyi", "a2a_service/v1/a2a_pb2_grpc.py")

# Lines that only record which grpcio-tools/protobuf release generated the file. They are ignored when
# checking staleness so that a newer toolchain does not make an unchanged .proto look stale.
_VERSION_LINES = re.compile(
    rb"^# Protobuf Python Version:.*$"
    rb"|^GRPC_GENERATED_VERSION = .*$"
    rb"|_runtime_version\.ValidateProtobufRuntimeVersion\([^)]*\)",
    re.MULTILINE,
)


def generate(out_dir: Path, proto_root: Path = PROTO_ROOT) -> list[Path]:
    """Compile every proto in ``PROTO_FILES`` into ``out_dir``; return the generated paths."""
    from grpc_tools import protoc  # type: ignore[import-untyped]  # grpc_tools ships no stubs

    out_dir.mkdir(parents=True, exist_ok=True)
    well_known = str(resources.files("grpc_tools") / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(proto_root / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")
    return [out_dir / name for name in GENERATED_FILES]


def normalized(content: bytes) -> bytes:
    """Content with toolchain-version lines blanked, for staleness comparison."""
    return _VERSION_LINES.sub(b"", content)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO_ROOT, help="output root (default: repository root)")
    args = parser.parse_args(argv)
    for path in generate(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
