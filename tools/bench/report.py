"""Every report of the benchmarks, rendered here: JSON lines (appended as measured, so a killed run keeps every
finished row), CSV, Markdown and aligned text tables, the models' throughput plot, the official-code table and
the GPU check's summary.

Rows carry the run's environment and protocol (tools/bench/env.py, protocol.py) as plain fields, so the JSON and
CSV say what each figure was measured on; Markdown shows them once, as a header line above the table.
"""
from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

_ID_KEYS = ("op", "case", "model", "dtype", "backend", "compile", "mode")
# environment / protocol fields: CSV columns after the measured ones, one header line in Markdown
META_KEYS = ("protocol", "timer", "warmup", "warmup_s", "reps", "min_time_s", "latency_batch", "threads",
             "cpu_model", "cpu_isa", "torch_cpu_capability", "na_cpu_isa", "na_cpu_build", "gpu", "cuda", "python",
             "torch", "timm", "triton", "natten", "onnx", "onnxruntime", "openvino", "visionattn_commit", "date")


# ------------------------------------------------------------------------------------------------ writers


def row_id(row: dict) -> str:
    """What identifies a measurement across runs (resuming an interrupted run skips the ids it has)."""
    return "|".join(str(row.get(k, "")) for k in _ID_KEYS)


def columns(rows, preferred=()) -> list[str]:
    """`preferred` columns that occur, then every other key in order of appearance."""
    cols = [c for c in preferred if any(c in r for r in rows)]
    for r in rows:
        cols += [c for c in r if c not in cols]
    return cols


def data_columns(rows, preferred=(), meta_keys=META_KEYS) -> list[str]:
    """`columns` without the environment / protocol fields that are the same in every row."""
    return [c for c in columns(rows, preferred)
            if c not in meta_keys or len({json.dumps(r.get(c), default=str) for r in rows}) > 1]


def cell(value, digits: int = 2) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.1e}"
        return f"{value:.{digits}f}"
    return str(value)


def text_table(rows, cols) -> str:
    cells = [list(cols)] + [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip() for row in cells)


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows, cols, headers: dict | None = None) -> str:
    """GitHub Markdown table; `headers` renames columns."""
    headers = headers or {}
    lines = ["| " + " | ".join(_md_escape(headers.get(c, c)) for c in cols) + " |",
             "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(_md_escape(cell(r.get(c))) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_csv(rows, path, cols=None, meta_keys=META_KEYS) -> None:
    """CSV of `rows` (measured columns first, then the environment / protocol fields), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = cols or columns(rows)
    meta_keys = list(dict.fromkeys(meta_keys))
    cols = [c for c in cols if c not in meta_keys] + [c for c in meta_keys if any(c in r for r in rows)]
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})
    os.replace(tmp, path)


def append_jsonl(path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
        f.flush()


def read_jsonl(path) -> list[dict]:
    """Rows of a JSON-lines file; a line cut short by a kill is ignored."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def describe(meta: dict) -> str:
    """One line: what the figures below were measured on and how."""
    parts = []
    if meta.get("gpu"):
        parts.append(f"GPU {meta['gpu']} (CUDA {meta.get('cuda', '?')})")
    if meta.get("cpu_model"):
        parts.append(f"CPU {meta['cpu_model']}, ISA {meta.get('cpu_isa', '?')}, NA kernel built for "
                     f"{meta.get('na_cpu_isa', '?')}")
    if meta.get("threads") not in (None, ""):
        parts.append(f"{meta['threads']} thread(s)")
    vers = [f"{k} {meta[k]}" for k in ("torch", "timm", "onnxruntime", "openvino", "triton") if meta.get(k)]
    if vers:
        parts.append(", ".join(vers))
    if meta.get("protocol"):
        how = f"protocol {meta['protocol']}: {meta.get('warmup')} warm-up"
        if meta.get("warmup_s"):
            how += f" (>= {meta['warmup_s']:g} s)"
        how += f", {meta.get('reps')} timed calls"
        if meta.get("min_time_s"):
            how += f" (>= {meta['min_time_s']:g} s)"
        parts.append(how + "; p50 / p90 / p99 ms, throughput = batch / mean")
    elif meta.get("timer"):
        parts.append(f"{meta['timer']} time, {meta.get('warmup', '?')} warm-up, {meta.get('reps', '?')} timed calls; "
                     "p50 / p90 / p99 ms")
    if meta.get("visionattn_commit"):
        parts.append(f"commit {meta['visionattn_commit']}")
    if meta.get("date"):
        parts.append(meta["date"])
    return "; ".join(parts) + "."


class Recorder:
    """The rows of one suite run: each appended to `<out_dir>/<name>.jsonl` as it is measured, with `meta` (the
    environment and protocol) merged in; `finish` writes `<name>.csv` and `<name>.md`."""

    def __init__(self, out_dir, name: str, meta: dict):
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name, self.meta = name, dict(meta)
        self.jsonl = self.dir / f"{name}.jsonl"
        self.jsonl.unlink(missing_ok=True)  # a new run of the suite replaces its own files
        self.rows: list[dict] = []

    def __call__(self, row: dict) -> dict:
        full = {**self.meta, **row}
        self.rows.append(full)
        append_jsonl(self.jsonl, full)
        return full

    def finish(self, preferred=(), rows=None, md_cols=None, markdown: str | None = None) -> str:
        """Write CSV (every field) and Markdown (`md_cols`, default every measured field) of `rows` (default: every
        row recorded; given, they replace the JSON lines too) or the `markdown` given; returns the Markdown."""
        if rows is not None:  # the final rows (ratios added after measuring): the JSON lines get them too
            rows = [{**self.meta, **r} for r in rows]
            _atomic_write(self.jsonl, "".join(json.dumps(r, default=str) + "\n" for r in rows))
        rows = self.rows if rows is None else rows
        meta_keys = (*META_KEYS, *self.meta)  # a runtime's version recorded by env.py is a meta field too
        write_csv(rows, self.dir / f"{self.name}.csv", columns(rows, preferred), meta_keys)
        if markdown is None:
            cols = [c for c in (md_cols or data_columns(rows, preferred, meta_keys))
                    if any(r.get(c) not in (None, "") for r in rows)]
            shown = set(cols)  # a field that differs between rows is a column, not part of the header line
            markdown = describe({k: v for k, v in self.meta.items() if k not in shown}) + "\n\n" + \
                markdown_table(rows, cols)
        text = markdown + "\n"
        _atomic_write(self.dir / f"{self.name}.md", text)
        return text

    def files(self) -> list[Path]:
        return [p for p in (self.jsonl, self.dir / f"{self.name}.csv", self.dir / f"{self.name}.md",
                            self.dir / f"{self.name}.png") if p.exists()]


# ------------------------------------------------------------------------------------------------ models


def throughput_plot(rows, path, title: str = "") -> None:
    """Throughput against parameters, one colour per family (the first mode with figures)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = next((k for k in [c for c in columns(rows) if c.endswith("_ips") and c != "reference_ips"]
                if any(r.get(k) for r in rows)), None)
    fig, ax = plt.subplots(figsize=(7, 5))
    for fam in sorted({r.get("family", "?") for r in rows}):
        pts = [r for r in rows if r.get("family", "?") == fam and key and r.get(key) and r.get("params_m")]
        ax.scatter([r["params_m"] for r in pts], [r[key] for r in pts], label=fam)
        for r in pts:
            ax.annotate(r["model"], (r["params_m"], r[key]), fontsize=7)
    ax.set_xlabel("params (M)")
    ax.set_ylabel(f"throughput, {key.removesuffix('_ips') if key else '-'} (img/s)")
    ax.set_xscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    if key:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------ official code


def _ratio_cell(r) -> str:
    if "ratio" not in r:
        return r.get("error") or r.get("note") or "—"
    return f"{r['ratio']:.2f} ({r['ratio_q1']:.2f}–{r['ratio_q3']:.2f})"


def official_table(rows) -> str:
    """Ours / official per model and (batch, size), ms of both, the logits' max |diff|; protocol line on top."""
    by = {}
    for r in rows:
        by.setdefault(r["model"], []).append(r)
    out = []
    for model, rs in by.items():
        first = rs[0]
        cells = {(r.get("batch"), r.get("img_size")): r for r in rs}
        diffs = [r["max_abs_diff"] for r in rs if "max_abs_diff" in r]
        line = {"model": model, "official code": f"{first['repo']} @ {first['commit'][:7]}",
                "max abs diff (logits)": f"{max(diffs):.1e}" if diffs else "—"}
        for (b, s), r in sorted(cells.items(), key=lambda kv: (kv[0][1] or 0, kv[0][0] or 0)):
            if b is None:
                continue
            line[f"bs{b} {s}px ours/official"] = _ratio_cell(r)
            if "ours_p50_ms" in r:
                line[f"bs{b} {s}px p50 ms (ours / official)"] = f"{r['ours_p50_ms']:.1f} / {r['official_p50_ms']:.1f}"
        if first.get("official_runs_on"):
            line["note"] = f"official model code on {first['official_runs_on']}"
        elif "note" in first and "batch" not in first:
            line["note"] = first["note"]
        out.append(line)
    cols = []
    for line in out:
        cols += [c for c in line if c not in cols]
    timed = next((r for r in rows if "ratio" in r), None)
    head = ""
    if timed:
        head = (f"fp32, CPU, eval, no_grad; {describe(timed)} Alternating pairs, the order flipped every pair; "
                "ours/official = ratio of the p50 times, < 1: ours faster (inter-quartile range of the per-pair "
                "ratios in brackets).\n\n")
    return head + markdown_table(out, cols)


# ------------------------------------------------------------------------------------------------ GPU check


def _ms(r, key="p50_ms"):
    v = r.get(key) if r else None
    return None if v is None else float(v)


def _fmt(v, digits=2):
    return cell(v, digits) if v is not None else "—"


def _ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def _tol(r) -> float:
    return {"float32": 5e-3, "float16": 2e-2, "bfloat16": 6e-2}.get(r.get("dtype"), 5e-3) if r.get(
        "device") == "cuda" else (1e-4 if r.get("dtype") == "float32" else 6e-2)


def _first_note(*rows) -> str:
    return next((x.get("error") or x.get("note") for x in rows if x and (x.get("error") or x.get("note"))), "")


def _checks_line(rows, what: str, label) -> list[str]:
    checks = [r for r in rows if r.get("mode") == "verify"]
    bad = [r for r in checks if "error" in r or r.get("max_abs_diff", 0) > _tol(r)]
    if not checks:
        return []
    return [f"Checked against the reference first: {len(checks) - len(bad)}/{len(checks)} {what}" + (
        ": " + "; ".join(f"{label(r)}: {r.get('error') or _fmt(r['max_abs_diff'], 4)}" for r in bad[:6])
        if bad else ".")]


def na_summary(rows) -> list[str]:
    lines = _checks_line(rows, "implementation x case x dtype combinations agree",
                         lambda r: f"{r['backend']} {r['case']} {r['dtype']}")
    timed = [r for r in rows if r.get("mode") in ("fwd", "fwdbwd")]
    by = {(r["case"], r["dtype"], r["backend"], r["mode"]): r for r in timed}
    keys = list(dict.fromkeys((r["case"], r["dtype"]) for r in timed))
    impls = list(dict.fromkeys(r["backend"] for r in timed))
    table, targets = [], []
    for case, dtype in keys:
        for impl in impls:
            f, fb = by.get((case, dtype, impl, "fwd")), by.get((case, dtype, impl, "fwdbwd"))
            if not f and not fb:
                continue
            table.append({"case": case, "dtype": dtype, "impl": impl, "fwd p50 ms": _fmt(_ms(f)),
                          "fwd+bwd p50 ms": _fmt(_ms(fb)), "fwd+bwd p90 / p99 ms":
                              f"{_fmt(_ms(fb, 'p90_ms'))} / {_fmt(_ms(fb, 'p99_ms'))}",
                          "peak MB (fwd+bwd)": _fmt(_ms(fb, "peak_mb"), 1),
                          "compile s": _fmt(_ms(fb, "compile_s") or _ms(f, "compile_s"), 1),
                          "note": _first_note(f, fb)[:80]})
        tri, tri0 = by.get((case, dtype, "triton", "fwdbwd")), by.get((case, dtype, "triton_norpb", "fwdbwd"))
        flex0, sdpa = by.get((case, dtype, "flex", "fwdbwd")), by.get((case, dtype, "sdpa_dense", "fwdbwd"))
        targets.append({"case": case, "dtype": dtype,
                        "flex (no RPB) / triton+RPB, fwd+bwd (target >= 1.0)": _fmt(_ratio(_ms(flex0), _ms(tri))),
                        "RPB cost, triton fwd+bwd (target <= 1.2)": _fmt(_ratio(_ms(tri), _ms(tri0))),
                        "SDPA dense / triton+RPB, fwd+bwd (>= 1.0 at 128x128)": _fmt(_ratio(_ms(sdpa), _ms(tri)))})
    if table:
        lines += ["", markdown_table(table, list(table[0]))]
    if targets:
        lines += ["", "Targets (same-run ratios of p50 times, higher is better except the RPB cost):", "",
                  markdown_table(targets, list(targets[0]))]
    return lines


def bra_summary(rows) -> list[str]:
    lines = _checks_line(rows, "agree", lambda r: f"{r['backend']} {r['case']}")
    timed = [r for r in rows if r.get("mode") in ("fwd", "fwdbwd")]
    by = {(r["size"], r["stage"], r["backend"], r["mode"]): r for r in timed}
    keys = sorted({(r["size"], r["stage"]) for r in timed})
    impls = list(dict.fromkeys(r["backend"] for r in timed))
    table = []
    for size, stage in keys:
        for impl in impls:
            f, fb = by.get((size, stage, impl, "fwd")), by.get((size, stage, impl, "fwdbwd"))
            if not f and not fb:
                continue
            gather = by.get((size, stage, "reference", "fwdbwd"))
            table.append({"size": size, "stage": stage, "map": (f or fb).get("shape"), "impl": impl,
                          "fwd p50 ms": _fmt(_ms(f)), "fwd+bwd p50 ms": _fmt(_ms(fb)),
                          "peak MB (fwd+bwd)": _fmt(_ms(fb, "peak_mb"), 1),
                          "vs gather, fwd+bwd": _fmt(_ratio(_ms(gather), _ms(fb))),
                          "memory vs gather": _fmt(_ratio(_ms(gather, "peak_mb"), _ms(fb, "peak_mb"))),
                          "note": _first_note(f, fb)[:80]})
    if table:
        lines += ["", markdown_table(table, list(table[0])),
                  "", "Target: triton fwd+bwd >= 3x gather at 512 px stages 1-2 (the `vs gather` column)."]
    return lines


def models_summary(rows) -> list[str]:
    onnx = [r for r in rows if r.get("mode") == "onnx"]
    rows = [r for r in rows if r.get("mode") != "onnx"]
    by = {}
    for r in rows:
        by.setdefault((r["model"], r.get("backend", "-"), bool(r.get("compile"))), {})[r.get("mode")] = r
    table = []
    for (model, backend, compiled), modes in by.items():
        tr, inf = modes.get("train"), modes.get("infer")
        table.append({"model": model, "backend": backend, "compile": "yes" if compiled else "no",
                      "train img/s": _fmt(_ms(tr, "img_s"), 1), "train peak MB": _fmt(_ms(tr, "peak_mb"), 1),
                      "infer img/s": _fmt(_ms(inf, "img_s"), 1), "infer peak MB": _fmt(_ms(inf, "peak_mb"), 1),
                      "note": _first_note(tr, inf)[:80]})
    table.sort(key=lambda r: (r["model"], r["compile"], r["backend"]))
    lines = []
    if table:
        first = next((r for r in rows if r.get("mode") == "train" and "batch" in r), None) or {}
        lines += [f"Training step: batch {first.get('batch', '?')}, {first.get('img_size', '?')} px, "
                  f"autocast {first.get('amp', '?')}, AdamW; inference: eval, same autocast; img/s = batch / mean "
                  "step time.", "", markdown_table(table, list(table[0]))]
        nat = max((_ms(r, "img_s") or 0 for r in rows if r["model"] == "nat_tiny" and r.get("mode") == "train"),
                  default=None)
        swin = max((_ms(r, "img_s") or 0 for r in rows
                    if r["model"] == "swin_tiny_patch4_window7_224" and r.get("mode") == "train"), default=None)
        if nat and swin:
            lines += ["", f"nat_tiny / swin_tiny training img/s (best of each): {nat / swin:.2f} (target >= 0.8)"]
    if onnx:
        table = [{"model": r["model"], "onnxruntime provider": r.get("backend"), "batch": r.get("batch"),
                  "img/s": _fmt(_ms(r, "img_s"), 1), "p50 / p90 / p99 ms":
                      f"{_fmt(_ms(r))} / {_fmt(_ms(r, 'p90_ms'))} / {_fmt(_ms(r, 'p99_ms'))}",
                  "note": (r.get("error") or r.get("note") or "")[:100]} for r in onnx]
        lines += ["", "ONNX (fp32, dynamic batch, the dynamo exporter) in onnxruntime's GPU providers:", "",
                  markdown_table(table, list(table[0]))]
    return lines


def pytest_summary(path: Path) -> dict:
    """Counts from pytest's last summary line, else (a killed run) from the per-test lines of -v."""
    if not path.is_file():
        return {}
    text = path.read_text(errors="replace")
    res = {}
    tail = [line for line in text.splitlines() if re.match(r"^=+ .*\d+ (passed|failed|skipped|errors?)", line)]
    if tail:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed)", tail[-1]):
            res["error" if what.startswith("error") else what] = int(n)
    else:
        for what in ("PASSED", "FAILED", "SKIPPED", "ERROR"):
            n = len(re.findall(rf"(?:^|\] ){what}(?: |$)|::\S+ {what}", text, flags=re.M))
            if n:
                res[what.lower() + " (run killed before its summary)"] = n
    fails = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.M)
    fails += re.findall(r"^(?:\[gw\d+\] \[ *\d+%\] )?(?:FAILED|ERROR) (tests/\S+)", text, flags=re.M)
    fails += re.findall(r"^(tests/\S+) (?:FAILED|ERROR)", text, flags=re.M)
    res["failures"] = sorted(set(fails))
    return res


def gpu_check_summary(out: Path) -> str:
    """Build summary.md from env.json, pytest_gpu.log and the *.jsonl rows in `out`; return its text."""
    out = Path(out)
    info = json.loads((out / "env.json").read_text()) if (out / "env.json").is_file() else {}
    hw = info.get("gpu") or f"CPU ({info.get('threads', info.get('cpu_threads', '?'))} threads)"
    lines = ["# GPU check", "",
             f"{info.get('date', '?')}, {hw}, torch {info.get('torch', '?')} (CUDA {info.get('cuda', '-')}), "
             f"Triton {info.get('triton', '-')}, timm {info.get('timm', '-')}, commit "
             f"{info.get('visionattn_commit', info.get('git', '-'))}; total {info.get('total_s', '?')} s."]
    if info.get("cpu_model"):
        lines.append(f"Host CPU {info['cpu_model']}, ISA {info.get('cpu_isa', '?')}, NA kernel built for "
                     f"{info.get('na_cpu_isa', '?')}.")
    for name, st in info.get("sections", {}).items():
        state = "killed at its time limit" if st.get("rc") is None else f"exit {st['rc']}"
        extra = f", {st['restarts']} restart(s)" if st.get("restarts") else ""
        lines.append(f"- {name}: {state}, {st.get('seconds')} s{extra}")
    tests = pytest_summary(out / "pytest_gpu.log")
    if tests:
        counts = ", ".join(f"{v} {k}" for k, v in tests.items() if k != "failures")
        lines += ["", "## pytest -m gpu", "", counts or "no summary line (killed?)"]
        lines += [f"- FAILED {t}" for t in tests["failures"][:20]]
    for title, name, fn in (("Neighborhood attention (ms)", "na.jsonl", na_summary),
                            ("Bi-level routing attention (ms)", "bra.jsonl", bra_summary),
                            ("Models", "models.jsonl", models_summary)):
        rows = read_jsonl(out / name)
        if rows:
            lines += ["", f"## {title}", ""] + fn(rows)
    text = "\n".join(lines).rstrip() + "\n"
    _atomic_write(out / "summary.md", text)
    return text
