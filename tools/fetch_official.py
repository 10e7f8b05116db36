"""Fetch the official implementations, at the commits the parity fixtures were made from, into a git-ignored cache.

    python tools/fetch_official.py                                   # git clone from GitHub
    python tools/fetch_official.py --mirror-root /path/to/mirrors    # from local mirrors (bare or not)
    python tools/fetch_official.py --family biformer --mirror rayleizhu/BiFormer=/srv/git/BiFormer.git

Each repository lands in .cache/official/<name> (checked out at the pinned commit, detached), the cache
`python -m tools.bench official` reads. Nothing of it is ever committed (.cache/ is git-ignored). Repositories and
commits come from the fixtures' JSON (`official_repo`, `official_commit`; VISIONATTN_PARITY_DIR, default
../shared/parity). A folder already there is reused when it is a git checkout at that commit (or an export whose
COMMIT file names it), and otherwise left as it is (exit 2): the tool never deletes or changes what it did not make.
A mirror under --mirror-root is looked up as <owner>+<name>/repo, <owner>+<name>, <owner>/<name>, <name>.git
or <name>. User errors: one line on stderr, exit 2.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from bench.cli import Parser, fail
from bench.official import parity_dir, pins

REPO = Path(__file__).resolve().parents[1]
FAMILIES = ("biformer", "agent_attention", "slab", "nat", "dinat")


def _git(*args, cwd=None, check=True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=check)


def find_mirror(slug: str, root: Path) -> Path | None:
    owner, name = slug.split("/")
    for cand in (root / f"{owner}+{name}" / "repo", root / f"{owner}+{name}", root / owner / name,
                 root / f"{name}.git", root / name):
        if cand.is_dir() and _git("--git-dir", str(cand), "rev-parse", "--git-dir", check=False).returncode == 0:
            return cand
        if (cand / ".git").exists():
            return cand
    return None


def _head(path: Path) -> str | None:
    res = _git("rev-parse", "HEAD", cwd=path, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def fetch(slug: str, commit: str, dest: Path, source: str) -> str:
    """Clone `source` into `dest` at `commit`; returns what was done."""
    if dest.exists():
        head = _head(dest)
        if head is None or _git("rev-parse", "--show-toplevel", cwd=dest, check=False).stdout.strip() != str(
                dest.resolve()):
            stamp = dest / "COMMIT"
            if stamp.is_file() and stamp.read_text().strip() == commit:
                return "already there (an export whose COMMIT file names the pinned commit)"
            raise FileExistsError(f"{dest} exists and is neither a git checkout nor an export of commit {commit[:12]}; "
                                  "move it away")
        if head == commit:
            return "already at the pinned commit"
        raise FileExistsError(f"{dest} is at {head[:12]}, not the pinned {commit[:12]}; left as it is "
                              f"(git -C {dest} checkout {commit}, or move it away)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    try:
        _git("clone", "--quiet", "--no-checkout", source, str(tmp))
        if _git("cat-file", "-e", f"{commit}^{{commit}}", cwd=tmp, check=False).returncode != 0:
            _git("fetch", "--quiet", "origin", commit, cwd=tmp)
        _git("checkout", "--quiet", "--detach", commit, cwd=tmp)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return f"cloned from {source}"


def parse_args(argv=None):
    p = Parser(description=__doc__)
    p.add_argument("--family", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    p.add_argument("--cache", default=str(REPO / ".cache" / "official"), help="where the checkouts go")
    p.add_argument("--mirror-root", default=None, help="folder of local mirrors (see above)")
    p.add_argument("--mirror", action="append", default=[], metavar="OWNER/NAME=PATH",
                   help="the mirror of one repository (repeatable)")
    args = p.parse_args(argv)
    mirrors = {}
    for item in args.mirror:
        slug, sep, path = item.partition("=")
        if not sep or slug.count("/") != 1 or not Path(path).is_dir():
            p.error(f"argument --mirror: expected OWNER/NAME=PATH to a folder, got {item!r}")
        mirrors[slug] = Path(path)
    if args.mirror_root and not Path(args.mirror_root).is_dir():
        p.error(f"argument --mirror-root: {args.mirror_root} is not a folder")
    args.mirrors = mirrors
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    root = parity_dir()
    if not root.is_dir():
        return fail(f"parity fixtures not found at {root} (set VISIONATTN_PARITY_DIR): they pin the commits")
    try:
        wanted = pins(root, args.family)
    except ValueError as err:
        return fail(str(err))
    if not wanted:
        return fail(f"no official repository named in the fixtures of {args.family} under {root}")
    cache = Path(args.cache)
    code = 0
    for slug, commit in sorted(wanted.items()):
        mirror = args.mirrors.get(slug) or (find_mirror(slug, Path(args.mirror_root)) if args.mirror_root else None)
        if args.mirror_root and mirror is None and slug not in args.mirrors:
            print(f"error: no mirror of {slug} under {args.mirror_root}", file=sys.stderr)
            code = 2
            continue
        source = str(mirror) if mirror else f"https://github.com/{slug}.git"
        dest = cache / slug.split("/")[1]
        try:
            what = fetch(slug, commit, dest, source)
        except FileExistsError as err:
            print(f"error: {err}", file=sys.stderr)
            code = 2
            continue
        except subprocess.CalledProcessError as err:
            msg = (err.stderr or "").strip().splitlines()
            print(f"error: {slug}: git {err.cmd[1]} failed: {msg[-1] if msg else err}", file=sys.stderr)
            code = 1
            continue
        print(f"{slug} @ {commit[:12]} -> {dest}: {what}")
    return code


if __name__ == "__main__":
    sys.exit(main())
