"""The compiled CPU kernel of neighborhood attention (``csrc/na_cpu.cpp``): build, load, dispatch check, and whether
``auto`` should use it.

The C++ source is compiled on first use (or ahead of time with ``python -m visionattn.kernels._na_cpu``) by the C++
compiler (``$CXX`` or ``c++``) into a cache folder, ``$VISIONATTN_CACHE`` or ``~/.cache/visionattn``, one build per
torch version, compiler, target and source, then loaded with ``torch.ops.load_library``. The target is chosen for
the machine: ``-march=x86-64-v4`` where torch reports AVX-512, ``x86-64-v3`` (AVX2 + FMA) where it reports AVX2,
``x86-64-v2`` / ``x86-64`` below, ``armv8-a`` (NEON) on ARM; ``VISIONATTN_NA_CPU_MARCH`` overrides it (``native``,
``skylake-avx512``, ``""`` for the compiler's default). The kernel picks its vector width from the target (AVX-512:
16 fp32 lanes, AVX2: 8, NEON / SSE: 4); ``build_info()`` says what the loaded build is. ``compile_check`` compiles
for the other targets (``TARGETS``: AVX2, AVX-512, aarch64 NEON and SVE, with a cross compiler where needed) so
that a build break on any of them is seen on one machine.

It is optional: without a C++ compiler or OpenMP, NA runs on the ``torch`` backend and one warning says why.
``VISIONATTN_NA_CPU=0`` turns it off. Every variable named here is read once, through ``visionattn._environment``.

The kernel is registered as ``torch.ops.visionattn_cpu.na_forward`` / ``na_backward`` (TORCH_LIBRARY, fake
implementations here); NA's ``cpu`` backend runs it inside the ``visionattn::na_forward`` / ``na_backward`` ops
(``ops.py``, which holds the autograd) through ``forward`` / ``backward``. float16 / bfloat16 inputs run in
float32.

``preferred`` is what ``auto`` asks before running NA on this kernel: the kernel and the torch path are timed once
per shape class on this machine (a fraction of a second, in a thread of its own, cached beside the build), and the
faster one runs.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

from visionattn._environment import settings

from ._common import capturing, exporting

__all__ = ["TARGETS", "available", "backward", "build", "build_info", "compile_check", "forward", "host_march",
           "load_error", "preferred", "shape_class", "unsupported"]

_SOURCE = Path(__file__).resolve().parent / "csrc" / "na_cpu.cpp"
_LIB = "visionattn_na_cpu"
# -fopenmp: ATen's parallel_for is an OpenMP region compiled into the kernel (without it the kernel is serial)
_CFLAGS = ["-std=c++20", "-O3", "-fPIC", "-fopenmp", "-Wno-psabi"]
_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_lock = threading.Lock()
_state: dict = {}  # "ok": bool once available() ran, "error": why the kernel is unavailable, "info": its build

# Targets compiled (not run) by compile_check: the GNU triplet of the compiler that builds them (the host's own
# compiler where the triplet is the host's) and the -march, with the vector ISA the kernel must then report.
TARGETS = {
    "x86-64-v3": ("x86_64-linux-gnu", "x86-64-v3", "avx2"),
    "x86-64-v4": ("x86_64-linux-gnu", "x86-64-v4", "avx512"),
    "aarch64": ("aarch64-linux-gnu", "armv8-a", "neon"),
    "aarch64-sve": ("aarch64-linux-gnu", "armv8-a+sve", "neon+sve"),
}


# ---------------------------------------------------------------------------------------------------- build


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model", "CPU part")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _host_triplet() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m) + "-linux-gnu"


def host_march() -> str:
    """The -march of the build loaded here: ``VISIONATTN_NA_CPU_MARCH``, else the x86-64 level torch's own CPU
    dispatch uses (AVX-512 -> x86-64-v4, AVX2 -> x86-64-v3), armv8-a on ARM, the compiler's default elsewhere."""
    march = settings().na_cpu_march
    if march is not None:
        return march
    arch = _host_triplet().split("-")[0]
    if arch == "x86_64":
        cap = torch.backends.cpu.get_cpu_capability()
        if cap.startswith("AVX512"):
            return "x86-64-v4"
        if cap == "AVX2":
            return "x86-64-v3"
        return "x86-64-v2" if {"sse4_2", "popcnt", "ssse3"} <= _cpu_flags() else "x86-64"
    if arch == "aarch64":
        return "armv8-a"
    return ""


def _flags(march: str) -> list[str]:
    abi = getattr(torch._C, "_GLIBCXX_USE_CXX11_ABI", None)
    return [*_CFLAGS, *([f"-march={march}"] if march else []),
            *([] if abi is None else [f"-D_GLIBCXX_USE_CXX11_ABI={int(abi)}"])]


_compilers: dict[str, str] = {}


def _compiler_id(cxx: str) -> str:
    """Resolved path and version line of a compiler (part of the cache key); RuntimeError where it is absent."""
    if cxx not in _compilers:
        path = shutil.which(cxx)
        if path is None:
            raise RuntimeError(f"no C++ compiler {cxx!r} on PATH")
        res = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=120)
        _compilers[cxx] = f"{os.path.realpath(path)} {(res.stdout.splitlines() or [''])[0]}"
    return _compilers[cxx]


def _cache_root() -> Path:
    return settings().cache_dir / "na_cpu"


def _build_dir(cxx: str, march: str, kind: str, source: bytes) -> Path:
    """One folder per (torch version, compiler, flags, target, source); -march=native adds this CPU's flags."""
    key = hashlib.sha256()
    parts = [kind, torch.__version__, _compiler_id(cxx), " ".join(_flags(march)), source]
    if "native" in march:
        parts.append(" ".join(sorted(_cpu_flags())))
    for part in parts:
        key.update(part if isinstance(part, bytes) else part.encode())
        key.update(b"\0")
    label = "".join(c if c.isalnum() or c in "-+." else "_" for c in (march or "default"))
    return _cache_root() / f"{kind}-{label}-{key.hexdigest()[:16]}"


@contextlib.contextmanager
def _locked(folder: Path):
    """An exclusive lock on the folder while it builds (fcntl: released when the process dies, killed or not)."""
    try:
        import fcntl
    except ImportError:  # no fcntl: concurrent builds both compile; the atomic rename keeps the result whole
        yield
        return
    with open(folder / "lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _compile(cxx: str, march: str, source: bytes, output: Path, *, link: bool, verbose: bool = False) -> Path:
    """Compile the source into ``output`` (a shared library, or with ``link=False`` an object file) unless it is
    there: a private copy of the source in the folder, written to a temporary name and renamed into place."""
    folder = output.parent
    folder.mkdir(parents=True, exist_ok=True)
    with _locked(folder):
        if output.exists():
            return output
        copy = folder / "na_cpu.cpp"
        copy.write_bytes(source)
        include = Path(torch.__file__).resolve().parent / "include"
        tmp = folder / f"{output.name}.{os.getpid()}.tmp"
        cmd = [cxx, *_flags(march), "-isystem", str(include), "-isystem", str(include / "torch" / "csrc" / "api" /
                                                                               "include"), str(copy)]
        if link:
            lib = Path(torch.__file__).resolve().parent / "lib"
            cmd += ["-shared", "-o", str(tmp), f"-L{lib}", "-lc10", "-ltorch_cpu"]
        else:
            cmd += ["-c", "-o", str(tmp)]
        if verbose:
            print(" ".join(cmd), file=sys.stderr)
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
            if res.returncode != 0:
                tail = "\n".join((res.stderr or res.stdout).strip().splitlines()[-20:])
                raise RuntimeError(f"{cxx} -march={march or '(default)'} failed (exit {res.returncode}):\n{tail}")
            os.replace(tmp, output)
        finally:
            tmp.unlink(missing_ok=True)
    return output


def build(verbose: bool = False) -> Path:
    """Compile (or find the cached build of) the kernel for this machine and load it into torch; returns the build
    folder. Raises what the compiler raises; ``available()`` is the non-raising form."""
    if _state.get("info"):
        return Path(_state["info"]["folder"])
    cxx, march = settings().cxx, host_march()
    source = _SOURCE.read_bytes()
    folder = _build_dir(cxx, march, "lib", source)
    so = _compile(cxx, march, source, folder / f"{_LIB}.so", link=True, verbose=verbose)
    torch.ops.load_library(str(so))
    _register()
    _state["info"] = dict(march=march or None, compiler=_compiler_id(cxx), flags=" ".join(_flags(march)),
                          folder=str(folder))
    return folder


def compile_check(target: str, verbose: bool = False) -> Path:
    """Compile the kernel (object file only, nothing is loaded) for one of ``TARGETS`` with the compiler for its
    architecture (the host's ``$CXX`` / ``c++``, else ``<triplet>-g++``, e.g. Debian's g++-aarch64-linux-gnu);
    checks that the build uses that target's vectors. Returns the object file (cached like the build); raises
    RuntimeError when the compiler is missing or the build fails."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {tuple(TARGETS)}, got {target!r}")
    triplet, march, isa = TARGETS[target]
    cxx = settings().cxx if triplet == _host_triplet() else f"{triplet}-g++"
    source = _SOURCE.read_bytes()
    obj = _compile(cxx, march, source, _build_dir(cxx, march, "obj", source) / "na_cpu.o", link=False,
                   verbose=verbose)
    if f"isa={isa} ".encode() not in obj.read_bytes():
        raise RuntimeError(f"{target}: the object file does not use {isa} vectors (build_info string not found)")
    return obj


@torch.compiler.assume_constant_result  # dynamo runs it once at trace time (it may build), never traces it
def available() -> bool:
    """True when the kernel is built and loaded (building it on first call); warns once when it cannot be."""
    if "ok" in _state:
        return _state["ok"]
    with _lock:
        if "ok" in _state:
            return _state["ok"]
        if not settings().na_cpu:
            _state.update(ok=False, error="disabled by VISIONATTN_NA_CPU=0")
            return False
        try:
            build()
            _state.update(ok=True, error=None)
        except Exception as e:  # no compiler, no OpenMP, read-only cache: the torch path still works
            lines = str(e).strip().splitlines()
            reason = f"{type(e).__name__}: {lines[0] if lines else ''}"
            _state.update(ok=False, error=reason)
            warnings.warn(f"visionattn: the compiled NA CPU kernel is unavailable ({reason}); neighborhood "
                          "attention on CPU uses the slower torch path", RuntimeWarning, stacklevel=2)
    return _state["ok"]


def build_info() -> dict:
    """What the loaded kernel was built for (building it if needed): ``isa`` (the vectors its code uses: avx512,
    avx2, sse2, neon, ...; from the compiled code itself), ``vector_bits``, ``march``, ``compiler``, ``flags``,
    ``folder``, the CPU ``cpu`` it runs on; ``isa`` None and ``error`` set when it is unavailable."""
    info = dict(isa=None, vector_bits=None, march=None, compiler=None, flags=None, folder=None, cpu=_cpu_model())
    if not available():
        return dict(info, error=load_error())
    info.update(_state["info"])
    for item in torch.ops.visionattn_cpu.build_info().split():
        name, _, value = item.partition("=")
        info[name] = int(value) if value.isdigit() else value
    info["vector_bits"] = 8 * info.pop("vector_bytes")
    return info


def load_error() -> str | None:
    """Why the kernel is unavailable (None when it is loaded or not tried yet)."""
    return _state.get("error")


def _register() -> None:
    if _state.get("registered"):
        return
    ns = "visionattn_cpu"

    @torch.library.register_fake(f"{ns}::na_forward")
    def _forward_fake(query, key, value, rpb, kernel_size, stride, dilation, is_causal, scale):
        return query.new_empty((*query.shape[:-1], value.shape[-1])), query.new_empty(query.shape[:-1])

    @torch.library.register_fake(f"{ns}::na_backward")
    def _backward_fake(grad_out, query, key, value, rpb, lse, delta, kernel_size, stride, dilation, is_causal,
                       scale, out=None, grad_lse=None):
        return (torch.empty_like(query), torch.empty_like(key), torch.empty_like(value),
                None if rpb is None else torch.empty_like(rpb))

    _state["registered"] = True


def unsupported(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg) -> str | None:
    """None when the compiled kernel runs these arguments, else why not (the dispatch's ``check``)."""
    if q.device.type != "cpu":
        return f"runs on CPU tensors only, got {q.device}"
    if q.dtype not in _DTYPES:
        return f"dtype must be one of {_DTYPES}, got {q.dtype}"
    if exporting():
        return "not while exporting (the exported graph holds the torch path)"
    if not available():
        return f"the compiled NA CPU kernel is unavailable ({load_error()})"
    return None


def _args(cfg) -> tuple:
    return list(cfg.kernel_size), list(cfg.stride), list(cfg.dilation), list(cfg.is_causal), float(cfg.scale)


def _compute(t: Tensor | None) -> Tensor | None:
    """The kernel runs float32 / float64: float16 / bfloat16 inputs run in float32."""
    return t.float() if t is not None and t.dtype in (torch.float16, torch.bfloat16) else t


def forward(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg) -> tuple[Tensor, Tensor]:
    """(out in q's dtype, natural logsumexp ``[B, *spatial, heads]`` in float32 / float64); no autograd (the
    ``visionattn::na_forward`` op calls it). ``cfg`` is ``na.NAConfig``."""
    out, lse = torch.ops.visionattn_cpu.na_forward(_compute(q), _compute(k), _compute(v), _compute(rpb), *_args(cfg))
    return out.to(q.dtype), lse


def backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, lse: Tensor, delta: Tensor | None,
             cfg, need_drpb: bool = True, out: Tensor | None = None, dlse: Tensor | None = None) -> tuple:
    """(d q, d k, d v, d rpb or None) from the forward's natural logsumexp and ``delta`` = sum(dout * out, -1)
    (minus the logsumexp's gradient, if any; the softmax may be a merged one, with extra keys), or, with ``delta``
    None, from ``out`` (and ``dlse``), the kernel computing delta itself: no torch ops, and their parallel regions,
    before it."""
    dq, dk, dv, drpb = torch.ops.visionattn_cpu.na_backward(_compute(dout), _compute(q), _compute(k), _compute(v),
                                                            _compute(rpb), lse, delta, *_args(cfg), _compute(out),
                                                            dlse)
    drpb = drpb.to(rpb.dtype) if need_drpb and drpb is not None else None
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), drpb


# ---------------------------------------------------------------------------------------------------- auto

_CALIBRATION_QUERIES = 1 << 16  # calibration inputs keep the call's shape, the batch cut to about this many queries
_REPEATS = 3  # timed calls per backend (alternating, best of): a busy machine slows one call, rarely all three
_CLOSE = 1.25  # backends this close after _REPEATS rounds get _REPEATS more before the choice is kept for good
_CAL_VERSION = 2  # the calibration file's name carries it: tables timed the older way are not reused
_cal_lock = threading.Lock()
_cal: dict[str, dict] = {}  # shape class -> {"cpu": seconds, "torch": seconds}
_cal_read: set = set()  # calibration files read into _cal
_CAL_THREAD = "visionattn-na-cpu-calibration"


def shape_class(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg, needs_grad: bool) -> str:
    """What the kernel's speed relative to the torch path depends on: rank, window, stride (lane or generic path),
    dilation, causal, RPB, dtype, head dims, GQA group, training or inference, threads, and the number of
    (query, head) pairs to a factor of 4."""
    n = q.dim() - 3
    queries = q.numel() // max(1, q.shape[-1])
    parts = [f"{n}d", "k" + "x".join(map(str, cfg.kernel_size)), "s" + "x".join(map(str, cfg.stride)),
             "dil" if any(d > 1 for d in cfg.dilation) else "", "causal" if any(cfg.is_causal) else "",
             "rpb" if rpb is not None else "", str(q.dtype).removeprefix("torch."), f"d{q.shape[-1]}",
             f"dv{v.shape[-1]}", f"g{q.shape[-2] // max(1, k.shape[-2])}", "train" if needs_grad else "infer",
             f"t{torch.get_num_threads()}", f"n{round(math.log(max(queries, 1), 4))}"]
    return "-".join(p for p in parts if p)


def _calibration_file() -> Path | None:
    """Beside the loaded build (one per torch version, compiler, target, source), one per CPU model."""
    info = _state.get("info")
    if not info:
        return None
    cpu = hashlib.sha256((_cpu_model() + " " + " ".join(sorted(_cpu_flags()))).encode()).hexdigest()[:12]
    return Path(info["folder"]) / f"calibration-v{_CAL_VERSION}-{cpu}.json"


def _read_table() -> None:
    path = _calibration_file()
    if path is None or path in _cal_read:
        return
    _cal_read.add(path)
    try:
        data = json.loads(path.read_text())
        for key, timing in data.get("classes", {}).items():
            if {"cpu", "torch"} <= set(timing):
                _cal.setdefault(key, {"cpu": float(timing["cpu"]), "torch": float(timing["torch"])})
    except (OSError, ValueError, AttributeError, TypeError):
        pass  # absent or unreadable: measured again


def _write_table(key: str, timing: dict) -> None:
    """Merged into the file under the build folder's lock, written whole (temporary name, renamed)."""
    path = _calibration_file()
    if path is None:
        return
    try:
        with _locked(path.parent):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                data = {}
            classes = data.get("classes") if isinstance(data.get("classes"), dict) else {}
            classes[key] = timing
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"cpu": _cpu_model(), "torch": torch.__version__, "classes": classes},
                                      indent=1, sort_keys=True))
            os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: the timing stays in memory


def _measure(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg, needs_grad: bool) -> dict:
    """Seconds per call of the kernel and of the torch path (forward, or forward + backward) on random inputs shaped
    like the call's, the batch cut to about ``_CALIBRATION_QUERIES`` queries: best of ``_REPEATS`` alternating calls
    after one warm-up call each (twice as many when the two are within ``_CLOSE``), this thread's CPU time at one
    thread. Runs the public ``na1d/2d/3d`` with ``backend=``."""
    from . import na1d, na2d, na3d

    fn = {1: na1d, 2: na2d, 3: na3d}[q.dim() - 3]
    per_item = max(1, q[:1].numel() // max(1, q.shape[-1]))
    b = max(1, min(q.shape[0], _CALIBRATION_QUERIES // per_item))
    gen = torch.Generator().manual_seed(0)

    def rand(shape, dtype):
        return torch.randn(shape, generator=gen).to(dtype)

    qq, kk, vv = (rand((b, *t.shape[1:]), t.dtype) for t in (q, k, v))
    rr = None if rpb is None else 0.1 * rand(rpb.shape, rpb.dtype)
    kw = dict(stride=cfg.stride, dilation=cfg.dilation, is_causal=cfg.is_causal, scale=cfg.scale)
    gout = None

    def call(backend: str) -> None:
        nonlocal gout
        leaves = [t.detach().requires_grad_(needs_grad) for t in (qq, kk, vv)]
        bias = None if rr is None else rr.detach().requires_grad_(needs_grad)
        out = fn(*leaves, cfg.kernel_size, rpb=bias, backend=backend, **kw)
        if needs_grad:
            gout = rand(out.shape, out.dtype) if gout is None else gout
            out.backward(gout)

    # at one thread the calls run on this thread alone: its CPU time leaves out what other processes take from a
    # shared core (wall-clock timings on a loaded machine once kept the slower backend for a class, for good);
    # with more threads the work is spread over torch's pool, so wall clock
    clock = time.thread_time if torch.get_num_threads() == 1 else time.perf_counter
    best = {"cpu": math.inf, "torch": math.inf}
    for name in best:
        call(name)
    for rounds in (_REPEATS, _REPEATS):
        for _ in range(rounds):
            for name in best:
                t0 = clock()
                call(name)
                best[name] = min(best[name], clock() - t0)
        if max(best.values()) > _CLOSE * min(best.values()):
            break
    return best


def _in_fresh_thread(fn, *args):
    """fn(*args) in a new thread: torch's thread-local state of the caller (no_grad, inference mode, autocast, a
    custom op's dispatch exclusions) does not apply there; torch's thread count does."""
    result: dict = {}

    def target():
        try:
            result["value"] = fn(*args)
        except Exception as e:  # noqa: BLE001 - re-raised in the caller
            result["error"] = e

    thread = threading.Thread(target=target, name=_CAL_THREAD, daemon=True)
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def preferred(q: Tensor, k: Tensor, v: Tensor, rpb: Tensor | None, cfg, needs_grad: bool) -> bool:
    """Whether ``auto`` runs this call on the kernel rather than the torch path: True when the kernel was measured
    at least as fast here for the call's ``shape_class`` (forward + backward when ``needs_grad``). Each class is timed
    once (``_measure``, a fraction of a second, in a thread of its own), kept in memory and in a file beside the
    build, so later processes on this machine reuse it. Under graph capture (``torch.compile``, ``torch.export``) and
    with ``VISIONATTN_NA_CPU_CALIBRATE=0`` nothing is timed or looked up: the kernel runs wherever it can. False
    when the kernel cannot run the call (``unsupported``)."""
    if unsupported(q, k, v, rpb, cfg) is not None:
        return False
    # dynamo traces this function: under capture no thread or table lookups
    if not settings().na_cpu_calibrate or q.numel() == 0 or capturing():
        return True
    if threading.current_thread().name == _CAL_THREAD:  # the calibration's own calls time what they are told
        return True
    key = shape_class(q, k, v, rpb, cfg, needs_grad)
    timing = _cal.get(key)
    if timing is None:
        with _cal_lock:
            _read_table()
            timing = _cal.get(key)
            if timing is None:
                try:
                    timing = _in_fresh_thread(_measure, q, k, v, rpb, cfg, needs_grad)
                except Exception as e:  # noqa: BLE001 - a call that cannot be timed keeps the kernel
                    warnings.warn(f"visionattn: timing the NA CPU kernel against the torch path failed "
                                  f"({type(e).__name__}: {e}); auto uses the kernel", RuntimeWarning, stacklevel=2)
                    _cal[key] = timing = {"cpu": 0.0, "torch": math.inf}  # this process only
                else:
                    _cal[key] = timing
                    _write_table(key, timing)
    return timing["cpu"] <= timing["torch"]


if __name__ == "__main__":  # `python -m visionattn.kernels._na_cpu [-v]`: build ahead of time (make)
    try:
        where = build(verbose="-v" in sys.argv[1:])
    except Exception as e:
        print(f"NA CPU kernel build failed: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    _state.update(ok=True, error=None)
    info = build_info()
    print(f"NA CPU kernel built: {where} (isa {info['isa']}, {info['vector_bits']}-bit vectors, "
          f"-march={info['march']})")
