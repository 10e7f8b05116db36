"""The benchmark front door: `python -m tools.bench <suite> [options]` from the repository root.

    python -m tools.bench models --filter 'nat_*' --modes eager,onnx --protocol timm
    python -m tools.bench kernels --op na --verify
    python -m tools.bench <suite> --help
"""
from __future__ import annotations

import sys

from .suites import SUITES, load


def usage() -> str:
    width = max(map(len, SUITES))
    lines = [__doc__.strip(), "", "suites:"]
    lines += [f"  {name.ljust(width)}  {summary}" for name, (_, summary) in SUITES.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name, rest = (argv[0], argv[1:]) if argv else ("", [])
    if name not in SUITES:
        what = f"unknown suite {name!r}" if name else "name a suite"
        print(f"python -m tools.bench: error: {what}; choose from {', '.join(SUITES)} (--help describes them)",
              file=sys.stderr)
        return 2
    return load(name).main(rest)


if __name__ == "__main__":
    sys.exit(main())
