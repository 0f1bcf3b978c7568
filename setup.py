"""Build script: the pure-Python packages always, the CUDA extension `star_elastic_kernels._C` when
the toolchain is there.

Whether to build CUDA is decided from the toolchain (nvcc and a CUDA build of torch), never from
the presence of a GPU: build machines usually have none. Switches (all documented in README.md):

  STAR_ELASTIC_SKIP_CUDA_BUILD=1   never build the extension (pure-Python install)
  STAR_ELASTIC_FORCE_CUDA_BUILD=1  build it or fail loudly (no silent skip)
  STAR_ELASTIC_CUDA_ARCHS="90a"    semicolon/comma-separated archs; "90a" = Hopper-only sm_90a,
                                   "90" = sm_90 + PTX (default "90a")
  MAX_JOBS, NVCC_THREADS           parallel compile jobs / nvcc threads per job
  CUDA_HOME                        toolkit root (default: from nvcc on PATH or /usr/local/cuda)
  CUTLASS_PATH                     a CUTLASS checkout (its include/ and tools/util/include) instead
                                   of the headers in the nvidia-cutlass package

Install with `pip install -e . --no-build-isolation` so the extension is built against the torch
that is installed (build isolation would pull another torch and break the ABI).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
STATUS_FILE = ROOT / "star_elastic_kernels" / "_build_status.json"


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def read_sources() -> list[str]:
    lines = (ROOT / "csrc" / "sources.txt").read_text().splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def find_cuda_home() -> Path | None:
    """The toolkit root: $CUDA_HOME, else the real location of nvcc on PATH, else /usr/local/cuda."""
    for candidate in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")):
        if candidate and (Path(candidate) / "bin" / "nvcc").exists():
            return Path(candidate)
    for candidate in (Path("/usr/local/cuda"),):
        if (candidate / "bin" / "nvcc").exists():
            return candidate
    nvcc = shutil.which("nvcc")
    if nvcc:
        home = Path(nvcc).resolve().parent.parent
        if (home / "include" / "cuda_runtime.h").exists():
            return home
    return None


def cutlass_include_dirs() -> list[Path]:
    """CUTLASS/CuTe headers: $CUTLASS_PATH, else the nvidia-cutlass package (installed --no-deps)."""
    override = os.environ.get("CUTLASS_PATH")
    if override:
        root = Path(override)
        dirs = [root / "include", root / "tools" / "util" / "include"]
    else:
        import importlib.util

        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or spec.origin is None:
            raise RuntimeError(
                "CUTLASS headers not found: `pip install --no-deps nvidia-cutlass==4.2.0.0`, "
                "or set CUTLASS_PATH to a CUTLASS checkout"
            )
        source = Path(spec.origin).parent / "source"
        dirs = [source / "include", source / "tools" / "util" / "include"]
    if not (dirs[0] / "cutlass" / "cutlass.h").exists():
        raise RuntimeError(f"CUTLASS headers not found: {dirs[0] / 'cutlass' / 'cutlass.h'} is missing")
    return dirs


def parse_archs(spec: str) -> list[str]:
    archs = [a.strip().lower().replace("sm_", "") for a in spec.replace(",", ";").split(";")]
    archs = [a for a in archs if a]
    for arch in archs:
        if not (arch.rstrip("a").isdigit()):
            raise RuntimeError(f"STAR_ELASTIC_CUDA_ARCHS: cannot parse arch {arch!r} (e.g. 90a, 90)")
    return archs


def gencode_flags(archs: list[str]) -> list[str]:
    flags = []
    for arch in archs:
        if arch.endswith("a"):  # arch-specific features (wgmma, TMA): SASS only, no forward PTX
            flags.append(f"-gencode=arch=compute_{arch},code=sm_{arch}")
        else:
            flags.append(f"-gencode=arch=compute_{arch},code=[sm_{arch},compute_{arch}]")
    return flags


def decide_cuda_build() -> tuple[bool, str]:
    """(build?, why). Raises when the build is forced but impossible."""
    forced = _flag("STAR_ELASTIC_FORCE_CUDA_BUILD")
    if _flag("STAR_ELASTIC_SKIP_CUDA_BUILD"):
        return False, "STAR_ELASTIC_SKIP_CUDA_BUILD is set"
    problem = None
    try:
        import torch
    except ImportError:
        problem = "torch is not importable at build time (use --no-build-isolation with torch installed)"
    else:
        if torch.version.cuda is None:
            problem = f"torch {torch.__version__} is a CPU-only build"
        elif find_cuda_home() is None:
            problem = "nvcc was not found (set CUDA_HOME or put nvcc on PATH)"
    if problem:
        if forced:
            raise RuntimeError(f"STAR_ELASTIC_FORCE_CUDA_BUILD is set but {problem}")
        return False, problem
    return True, "toolchain found"


def write_status(status: dict) -> None:
    STATUS_FILE.write_text(json.dumps(status, indent=2) + "\n")


def cuda_extension():
    cuda_home = find_cuda_home()
    os.environ["CUDA_HOME"] = str(cuda_home)
    import torch.utils.cpp_extension as cpp_extension
    from torch.utils.cpp_extension import CUDAExtension

    # cpp_extension resolves CUDA_HOME once, at its import (which `import torch` may already have
    # triggered), from nvcc's location on PATH; a wrapper script there gives a wrong root.
    cpp_extension.CUDA_HOME = str(cuda_home)

    archs = parse_archs(os.environ.get("STAR_ELASTIC_CUDA_ARCHS", "90a"))
    includes = [ROOT / "csrc", *cutlass_include_dirs()]
    define = f'-DSTAR_ELASTIC_CUDA_ARCHS="{";".join(archs)}"'
    # NDEBUG as in CMake's Release build: an assert left in a CUTLASS mainloop makes ptxas
    # serialize every wgmma (warning C7510).
    nvcc_flags = [
        "-O3",
        "-DNDEBUG",
        "-std=c++17",
        "--expt-relaxed-constexpr",
        "--expt-extended-lambda",
        f"--threads={os.environ.get('NVCC_THREADS', '2')}",
        define,
        *gencode_flags(archs),
    ]
    extension = CUDAExtension(
        name="star_elastic_kernels._C",
        sources=read_sources(),
        include_dirs=[str(p) for p in includes],
        extra_compile_args={"cxx": ["-O3", "-DNDEBUG", "-std=c++20", define], "nvcc": nvcc_flags},
    )
    return extension, archs, cuda_home


def main() -> None:
    ext_modules, cmdclass = [], {}
    build, why = decide_cuda_build()
    if build:
        from torch.utils.cpp_extension import BuildExtension

        extension, archs, cuda_home = cuda_extension()
        ext_modules, cmdclass = [extension], {"build_ext": BuildExtension}
        write_status({"built": True, "cuda_archs": archs, "cuda_home": str(cuda_home)})
        print(f"star-elastic-kernels: building the CUDA extension for sm_{', sm_'.join(archs)}",
              file=sys.stderr)
    else:
        write_status({"built": False, "reason": why})
        print(f"star-elastic-kernels: CUDA extension skipped: {why}", file=sys.stderr)
    packages = find_packages(include=["star_elastic_kernels", "star_elastic_kernels.*"])
    packages += ["star_elastic", *("star_elastic." + p for p in find_packages("python/star_elastic"))]
    setup(packages=packages, ext_modules=ext_modules, cmdclass=cmdclass)


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import its helpers
    main()
