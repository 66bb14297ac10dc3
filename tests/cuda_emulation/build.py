"""Builds fu_fast's real CUDA sources, unmodified, into a host extension that runs them on the CPU.

csrc/cuda/*.cu are compiled as C++ by the system compiler against the emulated runtime of this
directory (cuda_runtime.h, emulator.cpp), together with the real csrc/bindings.cpp (with
FU_FAST_WITH_CUDA, so its kernels given a stream run the CUDA twins) and the CPU kernels, into
one pybind11 module (PYBIND11_MODULE(_C)). Called with a stream, its kernels then take host pointers as "device
memory" and run the real launchers and kernels.

C++ cannot parse `kernel<<<grid, block, shared, stream>>>(args)`, so each .cu file is copied
into the build directory with every launch rewritten into a call of fu_emu::launch; the copy
keeps the original's line numbers (and names it with #line), so diagnostics point at csrc/.
The build step also decides how each kernel runs: one OS thread per CUDA thread when its source
text names a synchronising primitive, its threads one after another otherwise (the emulator
makes a synchronising primitive fail loudly in the latter mode, so a wrong guess cannot pass).

The result is cached under build/cuda_emulation/<hash of every input and flag>, so only a change
to a source, a header or the toolchain compiles again.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CSRC = ROOT / "csrc"
CACHE = ROOT / "build" / "cuda_emulation"

CPP_SOURCES = [CSRC / "bindings.cpp", CSRC / "cpu" / "permutation_cpu.cpp", CSRC / "cpu" / "ablation_cpu.cpp",
               CSRC / "cpu" / "noise_cpu.cpp", CSRC / "cpu" / "covariance_cpu.cpp", HERE / "emulator.cpp"]
CUDA_SOURCES = [CSRC / "cuda" / "device_cuda.cu", CSRC / "cuda" / "ablation_cuda.cu", CSRC / "cuda" / "noise_cuda.cu",
                CSRC / "cuda" / "covariance_cuda.cu", HERE / "probe.cu"]
RUNTIME_HEADER = HERE / "cuda_runtime.h"


class Unavailable(Exception):
    """The toolchain the emulation needs is missing (the tests skip with this reason)."""


class BuildError(Exception):
    """The sources did not compile (the tests fail with the compiler's output)."""


@dataclass(frozen=True)
class Kernel:
    threaded: bool      # its source names a synchronising primitive: one OS thread per CUDA thread
    max_threads: int    # from __launch_bounds__, 0 when it has none


@dataclass(frozen=True)
class Build:
    library: Path                 # the extension module, also loadable with ctypes
    kernels: dict[str, Kernel]    # every __global__ function of the CUDA sources


# Comments and string or character literals, blanked before the source is searched, so that a
# comment mentioning __syncthreads or <<< changes nothing.
_NOISE = re.compile(r"//[^\n]*|/\*.*?\*/|\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*'", re.S)
_BOUNDS = r"(?:__launch_bounds__\s*\(\s*(?P<bound{0}>\d+)[^)]*\)\s*)?"
_KERNEL = re.compile(r"\b__global__\s+" + _BOUNDS.format(1) + r"void\s+" + _BOUNDS.format(2) + r"(?P<name>\w+)\s*\(")
_SYNC = re.compile(r"__syncthreads|__syncwarp|_sync\s*\(")
_LAUNCH = re.compile(r"\b(\w+)\s*<<<")


def _blank(text: str) -> str:
    """text with comments and literals replaced by spaces (same length, same line breaks)."""
    def blank(match: re.Match) -> str:
        token = match.group()
        if token[0] == "/":
            return re.sub(r"[^\n]", " ", token)
        return token[0] + " " * (len(token) - 2) + token[-1]
    return _NOISE.sub(blank, text)


def _matching(text: str, start: int, opening: str, closing: str) -> int:
    """Index of the bracket closing the one at text[start]."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == opening:
            depth += 1
        elif text[i] == closing:
            depth -= 1
            if depth == 0:
                return i
    raise BuildError(f"unbalanced {opening}{closing} from offset {start}")


def find_kernels(text: str) -> dict[str, Kernel]:
    """The __global__ functions defined in a CUDA source, classified by their body's text."""
    blank = _blank(text)
    kernels = {}
    for match in _KERNEL.finditer(blank):
        parameters_end = _matching(blank, match.end() - 1, "(", ")")
        body_start = len(blank) - len(blank[parameters_end + 1:].lstrip())
        if not blank.startswith("{", body_start):
            continue  # a declaration
        body = blank[body_start:_matching(blank, body_start, "{", "}") + 1]
        bound = match.group("bound1") or match.group("bound2") or "0"
        kernels[match.group("name")] = Kernel(bool(_SYNC.search(body)), int(bound))
    return kernels


def _launch_config_end(blank: str, start: int) -> int:
    """Index of the `>>>` closing a launch configuration that begins at start."""
    depth = 0
    for i in range(start, len(blank)):
        if blank[i] in "([{":
            depth += 1
        elif blank[i] in ")]}":
            depth -= 1
        elif depth == 0 and blank.startswith(">>>", i):
            return i
    raise BuildError(f"a launch configuration from offset {start} has no closing >>>")


def rewrite_launches(text: str, kernels: dict[str, Kernel], origin: Path) -> str:
    """text with each `k<<<config>>>(args)` replaced, on the same lines, by
    `::fu_emu::launch("k", mode, bound, ::fu_emu::LaunchConfig(config), [&] { k(args); })`."""
    blank = _blank(text)
    pieces, position = [], 0
    for match in _LAUNCH.finditer(blank):
        if match.start() < position:
            continue
        name = match.group(1)
        line = blank.count("\n", 0, match.start()) + 1
        if name not in kernels:
            raise BuildError(f"{origin}:{line}: launch of {name}, which no CUDA source defines as a kernel")
        config_end = _launch_config_end(blank, match.end())
        arguments_start = len(blank) - len(blank[config_end + 3:].lstrip())
        if not blank.startswith("(", arguments_start):
            raise BuildError(f"{origin}:{line}: no argument list after the launch configuration of {name}")
        arguments_end = _matching(blank, arguments_start, "(", ")")
        kernel = kernels[name]
        mode = "Threaded" if kernel.threaded else "Sequential"
        pieces += [text[position:match.start()],
                   f'::fu_emu::launch("{name}", ::fu_emu::Mode::{mode}, {kernel.max_threads}u, '
                   f"::fu_emu::LaunchConfig({text[match.end():config_end]}), "
                   f"[&] {{ {name}({text[arguments_start + 1:arguments_end]}); }})"]
        position = arguments_end + 1
    rewritten = "".join(pieces) + text[position:]
    if "<<<" in _blank(rewritten):
        raise BuildError(f"{origin}: a kernel launch was not rewritten")
    return f'#line 1 "{origin}"\n' + rewritten


def find_compiler() -> str | None:
    for candidate in (os.environ.get("CXX"), "c++", "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def _compiler_identity(compiler: str) -> str:
    result = subprocess.run([compiler, "--version"], capture_output=True, text=True)
    return compiler + "\n" + result.stdout


def _openmp_flags(compiler: str, scratch: Path) -> list[str]:
    """["-fopenmp"] when the compiler builds and links OpenMP code (as the real build uses it)."""
    probe = scratch / "openmp_probe.cpp"
    probe.write_text("#include <omp.h>\nint main() { return omp_get_max_threads() > 0 ? 0 : 1; }\n")
    result = subprocess.run([compiler, "-fopenmp", str(probe), "-o", str(scratch / "openmp_probe")],
                            capture_output=True)
    for path in scratch.glob("openmp_probe*"):
        path.unlink()
    return ["-fopenmp"] if result.returncode == 0 else []


def _compile_all(commands: list[list[str]], cwd: Path) -> None:
    """Runs the compile commands, as many at a time as there are cores."""
    def run(command: list[str]) -> str | None:
        result = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return None if result.returncode == 0 else " ".join(command) + "\n" + result.stdout

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        failures = [failure for failure in pool.map(run, commands) if failure]
    if failures:
        raise BuildError("\n\n".join(failures))


def build() -> Build:
    """The emulated module, compiled if no cached build of the same inputs exists."""
    if not sys.platform.startswith("linux"):
        raise Unavailable("the emulated CUDA runtime parks its threads on Linux futexes")
    compiler = find_compiler()
    if compiler is None:
        raise Unavailable("no C++ compiler found (set CXX, or install c++/g++/clang++)")
    try:
        import pybind11
    except ImportError:
        raise Unavailable("pybind11 is not importable (pip install -e '.[test]')") from None

    cuda_texts = {path: path.read_text() for path in CUDA_SOURCES}
    kernels = {}
    for text in cuda_texts.values():
        kernels.update(find_kernels(text))
    includes = [HERE, CSRC, CSRC / "cuda", Path(pybind11.get_include()), Path(sysconfig.get_paths()["include"])]
    # -ffp-contract=off as the real build compiles the CPU noise kernel (CMakeLists.txt): the emulated
    # CUDA twins round every product and sum on their own, as __dmul_rn and __dadd_rn do on a GPU.
    flags = ["-std=c++17", "-O2", "-fPIC", "-pthread", "-Wall", "-Wextra", "-ffp-contract=off", "-DFU_FAST_WITH_CUDA"]
    flags += [f"-I{path}" for path in includes]
    link_flags = ["-shared", "-pthread"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"

    digest = hashlib.sha256()
    inputs = sorted({*CPP_SOURCES, *CUDA_SOURCES, RUNTIME_HEADER, Path(__file__).resolve(),
                     *CSRC.glob("*.h"), *(CSRC / "cuda").glob("*.h")})
    for path in inputs:
        digest.update(f"{path}\n".encode() + path.read_bytes())
    digest.update("\n".join(flags + link_flags + [suffix, pybind11.__version__, _compiler_identity(compiler)]).encode())
    target = CACHE / digest.hexdigest()[:20]   # the pruning below matches this name
    library = target / f"_C{suffix}"
    if library.exists():
        return Build(library, kernels)

    CACHE.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="building-", dir=CACHE))
    try:
        openmp = _openmp_flags(compiler, scratch)
        objects, commands = [], []
        # The largest translation unit first, so the others compile beside it.
        for source in CPP_SOURCES:
            objects.append(scratch / f"{source.stem}.o")
            commands.append([compiler, *flags, *openmp, "-c", str(source), "-o", str(objects[-1])])
        for source, text in cuda_texts.items():
            copy = scratch / f"{source.name}.cpp"
            copy.write_text(rewrite_launches(text, kernels, source))
            objects.append(scratch / f"{source.stem}.o")
            # nvcc includes the runtime header into every .cu file implicitly.
            commands.append([compiler, *flags, *openmp, "-include", str(RUNTIME_HEADER), "-c", str(copy),
                             "-o", str(objects[-1])])
        _compile_all(commands, scratch)
        _compile_all([[compiler, *link_flags, *openmp, *map(str, objects), "-o", str(scratch / library.name)]], scratch)
        try:
            scratch.rename(target)
        except OSError:
            if not library.exists():  # not merely another process having finished the same build first
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    # Builds of earlier sources are never used again (a process that still has one loaded keeps
    # its mapping when the file goes).
    for old in CACHE.iterdir():
        if old != target and re.fullmatch(r"[0-9a-f]{20}", old.name):
            shutil.rmtree(old, ignore_errors=True)
    return Build(library, kernels)
