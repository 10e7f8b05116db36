"""Our models against the official code: same weights, one process, alternating calls, fp32 on CPU (issue 19).

    python tools/fetch_official.py --mirror-root /path/to/mirrors     # once: the official code, pinned commits
    python -m tools.bench official                                    # every default model, bs1 / bs8 at 224 px
    python -m tools.bench official --models biformer_s agent_swin_t --threads 1 --timer cpu --reps 9

Per model, a worker process imports the official file unmodified from .cache/official/<repo> (missing legacy
modules shimmed in that process only, see tools/bench/official.py), builds the official model from the
constructor arguments in the parity fixtures' manifest (random init, seed 0), builds ours with
visionattn.from_official from the same arguments and the official state dict, checks the logits agree
(`max_abs_diff`), then times both at batch 1 and 8 (224 px; BiFormer also batch 1 at 512 px, where both are
built with auto_pad=True: 512 px maps are no multiple of n_win=7). `--warmup` pairs, then `--reps` pairs
(>= 7) alternating, the order flipped every pair: p50 / p90 / p99 / mean ms of each side, `ours/official` the
ratio of the p50 times (lower: ours faster), with the inter-quartile range of the per-pair ratios. NAT/DiNAT
run the official model code on visionattn.compat.natten_legacy (their NATTEN 0.14-0.17 is not installable), so
they compare model code on the same kernels; skipped with a message when that emulation is absent.
Writes official.jsonl, official.csv and official.md to --out-dir (every row with its threads, timer, CPU model
and ISA, the ISA the NA kernel was built for and the versions); the Markdown table is printed last.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from .. import official
from ..cli import Parser, check_out_dir, fail, int_at_least, positive_int, prog


def parse_args(argv=None):
    p = Parser(prog=prog("official"), description=__doc__)
    p.add_argument("--models", nargs="+", choices=sorted(official.MODELS), default=list(official.DEFAULT_MODELS),
                   metavar="MODEL", help=f"of {sorted(official.MODELS)}")
    p.add_argument("--cache", default=str(official.REPO / ".cache" / "official"),
                   help="the official checkouts (tools/fetch_official.py)")
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument("--img-size", type=positive_int, default=224)
    p.add_argument("--biformer-512", type=int, choices=[0, 1], default=1,
                   help="also BiFormer at 512 px, batch 1 (default 1)")
    p.add_argument("--warmup", type=positive_int, default=3)
    p.add_argument("--reps", type=int_at_least(7), default=9, help="timed pairs, at least 7")
    p.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--timer", choices=["wall", "cpu"], default="wall",
                   help="cpu: process CPU time (steadier on a shared machine; use with --threads 1)")
    p.add_argument("--check-only", action="store_true", help="build both and compare logits, no timing")
    p.add_argument("--out-dir", default="out/bench/official")
    p.add_argument("--timeout", type=positive_int, default=3600, help="seconds per model")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # one model, internal
    args = p.parse_args(argv)
    check_out_dir(p, args.out_dir)
    return args


def configs(args, family: str) -> list[tuple[int, int, dict]]:
    """(batch, size, extra constructor kwargs) to time."""
    out = [(b, args.img_size, {}) for b in args.batches]
    if family == "biformer" and args.biformer_512:
        # 512 px maps (128, 64, 32, 16) are no multiple of n_win=7: the official BRA pads with auto_pad=True
        # (a constructor argument of BiFormer that changes no parameter), so both models are built with it
        out.append((1, 512, {"auto_pad": True}))
    return out


def worker(args) -> int:
    spec = json.loads(args.worker)
    official.run_worker(spec, configs(args, spec["family"]), warmup=args.warmup, reps=args.reps,
                        threads=args.threads, timer=args.timer, check_only=args.check_only,
                        emit=lambda row: print("ROW " + json.dumps(row), flush=True))
    return 0


def main(argv=None) -> int:
    from ..env import environment
    from ..report import Recorder, official_table

    args = parse_args(argv)
    if args.worker:
        return worker(args)
    root = official.parity_dir()
    if not root.is_dir():
        return fail(f"parity fixtures not found at {root} (set VISIONATTN_PARITY_DIR): their manifests hold the "
                    "official constructors' arguments")
    cache = Path(args.cache)
    rec = Recorder(args.out_dir, "official", environment("cpu"))
    code = 0
    for name in args.models:
        spec = official.model_spec(name, root)
        checkout = cache / spec["repo"].split("/")[1]
        if not checkout.is_dir():
            row = rec(dict(model=name, repo=spec["repo"], commit=spec["commit"],
                           note=f"skipped: no checkout at {checkout} (run tools/fetch_official.py)"))
            print(f"{name}: {row['note']}", file=sys.stderr)
            continue
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [str(checkout / spec["import_root"])] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH")
                                                     else [])))
        cmd = [sys.executable, "-m", "tools.bench", "official", "--worker", json.dumps(spec),
               "--warmup", str(args.warmup), "--reps", str(args.reps), "--img-size", str(args.img_size),
               "--biformer-512", str(args.biformer_512), "--timer", args.timer, "--batches", *map(str, args.batches)]
        if args.check_only:
            cmd.append("--check-only")
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        print(f"{name}: official {spec['builder']} from {checkout} @ {spec['commit'][:12]}", file=sys.stderr,
              flush=True)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=official.REPO,
                                 timeout=args.timeout)
        except subprocess.TimeoutExpired:
            res = None
        got = [json.loads(line[4:]) for line in (res.stdout if res else "").splitlines() if line.startswith("ROW ")]
        if res is None or res.returncode != 0:
            err = "timed out" if res is None else (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]
            got.append(dict(model=name, repo=spec["repo"], commit=spec["commit"], error=f"worker: {err[:300]}"))
            code = 1
        for row in got:
            rec(row)
            ratio = f"{row['ratio']:.2f}" if "ratio" in row else row.get("error") or row.get("note") or ""
            print(f"  {row.get('batch', '')} {row.get('img_size', '')} {ratio}", file=sys.stderr, flush=True)
    text = rec.finish(["model", "batch", "img_size", "ratio", "ratio_q1", "ratio_q3"],
                      markdown=official_table(rec.rows))
    print(text, end="")
    return code
