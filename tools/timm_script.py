"""Run one of timm's own scripts, unmodified, with the zoo registered (``import visionattn`` first):

    python tools/timm_script.py benchmark.py --model nat_mini --bench both --img-size 224
    python tools/timm_script.py onnx_export.py nat_mini.onnx --model nat_mini
    python tools/timm_script.py onnx_validate.py /path/to/imagenet/val --onnx-input nat_mini.onnx

The script is looked up as given, else in .cache/timm_scripts (``tools/fetch_timm_scripts.py`` puts them there);
its arguments are passed on as timm documents them. Exit status: the script's. A missing script: one line, exit 2.
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT_DIR = REPO / ".cache" / "timm_scripts"


def find_script(name: str) -> Path | None:
    for cand in (Path(name), SCRIPT_DIR / name):
        if cand.is_file():
            return cand
    return None


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    script = find_script(argv[0])
    if script is None:
        print(f"timm_script: error: {argv[0]} not found (as given or in {SCRIPT_DIR}; run "
              "tools/fetch_timm_scripts.py --mirror ...)", file=sys.stderr)
        return 2
    import visionattn  # noqa: F401  (registers the zoo with timm)

    sys.argv = [str(script), *argv[1:]]
    sys.path.insert(0, str(script.parent))
    try:
        runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
