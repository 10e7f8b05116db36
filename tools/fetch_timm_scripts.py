"""Copy timm's own scripts (benchmark.py, onnx_export.py, onnx_validate.py, validate.py) from a checkout or mirror of
huggingface/pytorch-image-models into the git-ignored .cache/timm_scripts, where tools/timm_script.py and the tests
find them. They are not in the timm wheel; nothing of them is committed.

    python tools/fetch_timm_scripts.py --mirror /path/to/pytorch-image-models          # bare or not
    python tools/fetch_timm_scripts.py --mirror /path/to/mirror --ref v1.0.31

--ref defaults to the tag of the installed timm (v<version>) when the mirror has it, else HEAD (said on stderr).
The folder is made by this tool and marked (SOURCE file: mirror, ref, commit); a folder it did not make is left as it
is (exit 2). User errors: one line on stderr, exit 2.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("benchmark.py", "onnx_export.py", "onnx_validate.py", "validate.py")
DEFAULT_OUT = REPO / ".cache" / "timm_scripts"
MARK = "SOURCE"


def _fail(msg: str) -> None:
    print(f"fetch_timm_scripts: error: {msg}", file=sys.stderr)
    raise SystemExit(2)


def _git(mirror: Path, *args) -> subprocess.CompletedProcess:
    gd = mirror / ".git" if (mirror / ".git").exists() else mirror
    return subprocess.run(["git", "--git-dir", str(gd), *args], capture_output=True, check=False)


def _timm_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("timm")
    except Exception:  # noqa: BLE001  (timm not installed: no default tag)
        return None


def fetch(mirror: Path, ref: str | None, out: Path) -> Path:
    """Copy the scripts at ``ref`` of ``mirror`` into ``out``; returns ``out``."""
    if _git(mirror, "rev-parse", "--git-dir").returncode != 0:
        _fail(f"--mirror {mirror} is not a git repository (a checkout or a bare mirror of pytorch-image-models)")
    if ref is None:
        ver = _timm_version()
        tag = f"v{ver}" if ver else None
        if tag and _git(mirror, "rev-parse", "--verify", f"{tag}^{{commit}}").returncode == 0:
            ref = tag
        else:
            ref = "HEAD"
            print(f"fetch_timm_scripts: the mirror has no tag {tag} (installed timm); using HEAD", file=sys.stderr)
    got = _git(mirror, "rev-parse", "--verify", f"{ref}^{{commit}}")
    if got.returncode != 0:
        _fail(f"--ref {ref!r} is not a commit of {mirror}")
    commit = got.stdout.decode().strip()
    if out.exists() and not (out / MARK).is_file():
        _fail(f"{out} exists and was not made by this tool (no {MARK} file); move it or pass another --out")
    texts = {}
    for name in SCRIPTS:
        blob = _git(mirror, "show", f"{commit}:{name}")
        if blob.returncode != 0:
            _fail(f"{name} not found at {ref} ({commit[:12]}) of {mirror}")
        texts[name] = blob.stdout
    out.mkdir(parents=True, exist_ok=True)
    for name, data in texts.items():
        (out / name).write_bytes(data)
    (out / MARK).write_text(f"mirror {mirror}\nref {ref}\ncommit {commit}\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mirror", required=True, type=Path, help="checkout or bare mirror of pytorch-image-models")
    p.add_argument("--ref", default=None, help="tag / commit (default: v<installed timm> if present, else HEAD)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"target folder (default {DEFAULT_OUT})")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return 2 if e.code else 0
    out = fetch(args.mirror, args.ref, args.out)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
