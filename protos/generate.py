"""Regenerate the committed Python stubs from the .proto files in this folder.

    python protos/generate.py           # rewrite *_pb2.py, *_pb2.pyi, *_pb2_grpc.py
    python protos/generate.py --check   # exit 1 if the committed stubs are stale (CI)

The stubs are committed so that installing borealdb needs no code generation; CI
runs --check so that they never drift from the .proto sources.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

PROTO_DIR = Path(__file__).resolve().parent
GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def _generate(out_dir: Path) -> list[Path]:
    from grpc_tools import protoc  # imported late: only this script needs grpcio-tools

    protos = sorted(PROTO_DIR.glob("*.proto"))
    if not protos:
        raise SystemExit(f"no .proto files in {PROTO_DIR}")
    import grpc_tools

    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    outputs = sorted(p for p in out_dir.iterdir() if p.name.endswith(GENERATED_SUFFIXES))
    # protoc writes `import foo_pb2`, which only works with the folder on sys.path;
    # inside the borealdb.protos package the import must be relative.
    for path in outputs:
        text = path.read_text()
        text = re.sub(r"^import (\w+_pb2) as ", r"from . import \1 as ", text, flags=re.M)
        path.write_text(text)
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the committed stubs are stale")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        outputs = _generate(Path(tmp))
        if args.check:
            stale = [
                p.name
                for p in outputs
                if not (PROTO_DIR / p.name).exists() or not filecmp.cmp(p, PROTO_DIR / p.name, shallow=False)
            ]
            expected = {p.name for p in outputs}
            extra = [p.name for p in PROTO_DIR.iterdir() if p.name.endswith(GENERATED_SUFFIXES) and p.name not in expected]
            if stale or extra:
                print(f"stale generated stubs: {', '.join(stale + extra)}; run: python protos/generate.py", file=sys.stderr)
                return 1
            print(f"generated stubs are up to date ({len(outputs)} files)")
            return 0
        for p in outputs:
            shutil.copyfile(p, PROTO_DIR / p.name)
            print(f"wrote {PROTO_DIR / p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
