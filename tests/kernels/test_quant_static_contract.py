"""The static Hopper contract of the quant kernels (DESIGN §8), checked without a GPU.

* The build defines NDEBUG (an assert in a CUTLASS mainloop serializes its wgmma pipeline).
* ptxas never warns C7510 ("wgmma serialized") in the build log: ``make`` keeps the whole
  output of the real build (``pip install -v``, every nvcc and ptxas line) in ``.venv/build.log``.
  Without that log (a build by hand), every source that can contain wgmma (it includes CUTLASS /
  CuTe or writes wgmma itself) is compiled again to PTX with the build's own flags and ptxas is
  run on it, cached under build/ by the hash of the sources, headers, flags and toolkit.
* The SASS of the built ``_C`` (read with the cuobjdump that ships in the Triton wheel): the
  NVFP4 GEMM kernels issue LDGSTS or UTMALDG and contain HMMA / HGMMA, no quant kernel uses
  local memory (no spills), and no kernel with wgmma arrives at the warpgroup barrier once per
  wgmma or calls out of the module (a serialized pipeline: 8 ARRIVE + 8 DEPBAR.LE gsb0, 0x0 and
  two CALL.ABS to __assertfail per FP8 kernel before NDEBUG; 2 ARRIVE after).
* No host reads: every quant launcher and public op runs on fake CUDA tensors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import star_elastic_kernels as sek
from star_elastic_kernels import _extension

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "ptxas_check"


def _setup_module():
    spec = importlib.util.spec_from_file_location("star_elastic_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _toolchain_or_skip(setup):
    if setup.find_cuda_home() is None:
        pytest.skip("nvcc is not installed here (CI has it)")


# --- NDEBUG --------------------------------------------------------------------------------------


def test_every_build_defines_ndebug():
    setup = _setup_module()
    _toolchain_or_skip(setup)
    extension = setup.cuda_extension()[0]
    assert "-DNDEBUG" in extension.extra_compile_args["nvcc"]
    assert "-DNDEBUG" in extension.extra_compile_args["cxx"]
    # CMake: Release is the default build type, and Release's flags carry -DNDEBUG.
    assert re.search(r"set\(CMAKE_BUILD_TYPE Release", (ROOT / "CMakeLists.txt").read_text())


# --- ptxas C7510 ---------------------------------------------------------------------------------


def _wgmma_capable_sources(setup) -> list[Path]:
    """The CUDA sources that can contain wgmma: they include CUTLASS / CuTe, or write it."""
    sources = []
    for name in setup.read_sources():
        path = ROOT / name
        if path.suffix != ".cu":
            continue
        text = path.read_text()
        includes = [text] + [(ROOT / "csrc" / h).read_text() for h in
                             re.findall(r'#include "([^"]+)"', text) if (ROOT / "csrc" / h).exists()]
        if any(re.search(r"#include <(cutlass|cute)/|wgmma", t) for t in includes):
            sources.append(path)
    return sources


def _project_files_included_by(source: Path) -> list[Path]:
    """`source` and every csrc/ header it includes, transitively (third-party headers are pinned
    by the toolkit and CUTLASS versions in the cache key)."""
    seen, todo = [], [source]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        for name in re.findall(r'#include "([^"]+)"', path.read_text()):
            for candidate in (ROOT / "csrc" / name, path.parent / name):
                if candidate.exists():
                    todo.append(candidate.resolve())
                    break
    return seen


def _ptxas_log(setup, source: Path, nvcc: Path, flags: list[str], includes: list[str]) -> str:
    """ptxas -v output for `source` compiled to PTX with the build's flags (cached)."""
    key = hashlib.sha256()
    key.update(subprocess.run([str(nvcc), "--version"], capture_output=True, text=True).stdout.encode())
    key.update(json.dumps([flags, includes]).encode())
    try:  # the CUTLASS headers' version (a CUTLASS_PATH checkout is named by its path above)
        key.update(importlib.metadata.version("nvidia-cutlass").encode())
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in _project_files_included_by(source):
        key.update(path.read_bytes())
    cached = CACHE / f"{source.stem}-{key.hexdigest()[:16]}.log"
    if cached.exists():
        return cached.read_text()
    CACHE.mkdir(parents=True, exist_ok=True)
    ptx = CACHE / f"{source.stem}.ptx"
    arch_flags = [f for f in flags if f.startswith("-gencode")]
    other = [f for f in flags if not f.startswith("-gencode") and not f.startswith("--threads")]
    archs = [re.search(r"compute_(\w+)", f).group(1) for f in arch_flags]
    log = []
    for arch in archs:
        subprocess.run([str(nvcc), *other, f"-arch=compute_{arch}", "-ptx", str(source), "-o",
                        str(ptx), *[f"-I{i}" for i in includes]],
                       check=True, capture_output=True, text=True, timeout=3600)
        ptxas = nvcc.parent / "ptxas"
        result = subprocess.run([str(ptxas), "-v", f"-arch=sm_{arch}", str(ptx), "-o", os.devnull],
                                capture_output=True, text=True, timeout=3600)
        assert result.returncode == 0, result.stderr[-3000:]
        log.append(result.stdout + result.stderr)
    ptx.unlink(missing_ok=True)
    cached.write_text("\n".join(log))
    return cached.read_text()


BUILD_LOG = ROOT / ".venv" / "build.log"


def _c7510_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "C7510" in line]


def test_a_serialized_wgmma_warning_is_found_in_a_log():
    log = ("[3/9] /usr/local/cuda/bin/nvcc ... csrc/quant/fp8_gemm_sm90.cu\n"
           "ptxas warning : (C7510) Potential Performance Loss: wgmma.mma_async instructions are "
           "serialized due to the presence of Extern calls in the function '_Z3foov'\n")
    assert len(_c7510_lines(log)) == 1 and not _c7510_lines("ptxas info : Used 168 registers")


def _cuda_build_log() -> str | None:
    """The whole log of the last ``make`` build of the extension, if it compiled CUDA."""
    if not BUILD_LOG.exists():
        return None
    log = BUILD_LOG.read_text(errors="replace")
    return log if "nvcc" in log and "fp8_gemm_sm90" in log else None


@pytest.mark.skipif(sys.platform != "linux", reason="the CUDA toolkit is Linux-only here")
def test_ptxas_never_serializes_wgmma():
    log = _cuda_build_log()
    if log is not None:
        assert not _c7510_lines(log), f"ptxas serialized wgmma (C7510) in {BUILD_LOG}: {_c7510_lines(log)[:3]}"
        return
    setup = _setup_module()
    _toolchain_or_skip(setup)
    extension = setup.cuda_extension()[0]
    nvcc = Path(setup.find_cuda_home()) / "bin" / "nvcc"
    sources = _wgmma_capable_sources(setup)
    assert any("fp8_gemm_sm90" in s.name for s in sources)
    warnings = {}
    for source in sources:
        log = _ptxas_log(setup, source, nvcc, extension.extra_compile_args["nvcc"],
                         extension.include_dirs)
        hits = _c7510_lines(log)
        if hits:
            warnings[source.name] = hits[:3]
    assert not warnings, f"ptxas serialized wgmma (C7510): {warnings}"


# --- SASS of the built extension -----------------------------------------------------------------


def _cuobjdump() -> Path:
    if os.environ.get("CUOBJDUMP"):
        return Path(os.environ["CUOBJDUMP"])
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"


def _built_library() -> Path:
    if _extension.unavailable_reason() is not None:
        pytest.skip(f"_C is not available: {_extension.unavailable_reason()}")
    import star_elastic_kernels._C as c

    return Path(c.__file__)


def _kernels() -> dict[str, dict]:
    """name -> {"ops": [opcodes], "local": bytes, "sass": text} for every kernel of _C."""
    tool = _cuobjdump()
    if not tool.exists():
        pytest.skip(f"no cuobjdump at {tool}")
    library = _built_library()
    sass = subprocess.run([str(tool), "-sass", str(library)], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([str(tool), "-res-usage", str(library)], capture_output=True, text=True,
                           check=True).stdout
    local = {name: int(value) for name, value in
             re.findall(r"Function (\S+?):\s*\n\s*REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:(\d+)", usage)}
    parts = re.split(r"\n\s*Function : (\S+)\n", sass)
    kernels = {}
    for i in range(1, len(parts), 2):
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", parts[i + 1])
        kernels[parts[i]] = {"ops": ops, "local": local.get(parts[i]), "sass": parts[i + 1]}
    return kernels


@pytest.fixture(scope="module")
def kernels():
    return _kernels()


def _count(ops, prefix):
    return sum(op.startswith(prefix) for op in ops)


def _quant(kernels):
    return {name: k for name, k in kernels.items()
            if "star_elastic5quant" in name or "float_e4m3" in name}


def test_nvfp4_gemm_kernels_stream_with_cp_async_or_tma_into_tensor_cores(kernels):
    gemms = {name: k for name, k in _quant(kernels).items()
             if _count(k["ops"], "HMMA") + _count(k["ops"], "HGMMA") > 0}
    marlin = [name for name in gemms if "marlin_kernel" in name]
    assert len(marlin) == 8, sorted(gemms)  # {fp16, bf16} x {1, 2, 4, 8} token groups
    for name, k in gemms.items():
        assert _count(k["ops"], "LDGSTS") + _count(k["ops"], "UTMALDG") > 0, name
        assert _count(k["ops"], "HMMA") + _count(k["ops"], "HGMMA") > 0, name
        assert _count(k["ops"], "HMUL2") > 0, name  # the bit-level dequant's scale multiply


def test_per_token_quantization_reads_16_bytes_at_a_time(kernels):
    (kernel,) = [k for name, k in kernels.items() if "quantize_per_row_kernel" in name]
    assert _count(kernel["ops"], "LDG.E.128") >= 2  # the amax pass and the quantizing pass


def test_no_quant_kernel_spills(kernels):
    quant = _quant(kernels)
    assert quant
    for name, k in quant.items():
        assert k["local"] == 0, name
        assert _count(k["ops"], "STL") + _count(k["ops"], "LDL") == 0, name


def test_no_wgmma_pipeline_is_serialized(kernels):
    gmma = {name: k for name, k in kernels.items()
            if _count(k["ops"], "HGMMA") + _count(k["ops"], "QGMMA") > 0}
    assert any("float_e4m3" in name for name in gmma)  # the FP8 GEMM is among them
    for name, k in gmma.items():
        wgmma = _count(k["ops"], "HGMMA") + _count(k["ops"], "QGMMA")
        arrives = k["ops"].count("WARPGROUP.ARRIVE")
        assert arrives < wgmma, f"{name[:80]}: one warpgroup arrive per wgmma ({arrives})"
        # An absolute call leaves the module (__assertfail, vprintf): what makes ptxas serialize.
        # (CALL.REL is an internal subroutine such as 64-bit division.)
        assert _count(k["ops"], "CALL.ABS") == 0, f"{name[:80]} calls out (e.g. __assertfail)"


# --- no host reads -------------------------------------------------------------------------------


def _define_quant_schemas_from_the_sources() -> None:
    """Without a built _C, define its quant op schemas (read from csrc/quant/bindings.cpp) with
    their fakes, so the launchers below are exercised against the real signatures."""
    text = (ROOT / "csrc" / "quant" / "bindings.cpp").read_text()
    block = text[text.index("TORCH_LIBRARY_FRAGMENT"):]
    block = block[:block.index("\n}")]
    schemas = ["".join(re.findall(r'"([^"]*)"', d)) for d in re.findall(r"m\.def\((.*?)\);", block, re.S)]
    library = torch.library.Library("star_elastic", "FRAGMENT")
    for schema in schemas:
        library.define(schema)
        torch.library.register_fake(f"star_elastic::{schema.split('(')[0]}",
                                    lambda *args, **kwargs: None, lib=library)
    _define_quant_schemas_from_the_sources.library = library  # keep it alive


@pytest.fixture(scope="module")
def quant_c_ops():
    from star_elastic_kernels.quant import _c_fakes

    if not _c_fakes.REGISTERED:
        _define_quant_schemas_from_the_sources()
    return True


def test_launchers_and_public_ops_run_on_fake_cuda_tensors(quant_c_ops):
    from star_elastic_kernels.quant import fp8 as fp8_ops
    from star_elastic_kernels.quant import linear as linear_ops
    from star_elastic_kernels.quant import nvfp4 as nvfp4_ops

    with FakeTensorMode():
        cuda = torch.device("cuda")
        x = torch.empty(5, 256, dtype=torch.bfloat16, device=cuda)
        data = torch.empty(192, 128, dtype=torch.uint8, device=cuda)
        scale = torch.empty(192, 16, dtype=torch.float8_e4m3fn, device=cuda)
        g = torch.empty((), dtype=torch.float32, device=cuda)
        bias = torch.empty(192, dtype=torch.bfloat16, device=cuda)
        w8 = torch.empty(192, 256, dtype=torch.float8_e4m3fn, device=cuda)
        w8_scale = torch.empty(192, dtype=torch.float32, device=cuda)

        # The CUDA launchers, each calling its _C op(s).
        codes, scales = nvfp4_ops._prepack_cuda(data, scale)
        assert codes.shape == (3, 4, 2048) and scales.shape == (3, 4, 256)
        out = linear_ops._nvfp4_marlin_cuda(x, codes, scales, g, bias, 150)
        assert out.shape == (5, 150) and out.dtype == torch.bfloat16
        q, s = fp8_ops._quantize_per_row_cuda(x)
        assert q.shape == x.shape and s.shape == (5,)
        for mode in ("dynamic_per_token", "static"):
            out = linear_ops._fp8_linear_cuda(x, w8, w8_scale, bias, g, mode)
            assert out.shape == (5, 192)

        # The public ops (argument checks, slicing, dispatch to the registered op).
        w = sek.NVFP4Weight(data, scale, g)
        packed = sek.NVFP4Prepacked(codes, scales, g, 192, 256)
        for weight in (w, packed):
            out = sek.nvfp4_linear(x[:, :160], weight, bias, out_features=100, backend="torch")
            assert out.shape == (5, 100)
        assert sek.prepack_nvfp4(w, backend="torch").codes.shape == (3, 4, 2048)
        f8 = sek.FP8Weight(w8, w8_scale)
        for mode, input_scale in (("dynamic_per_token", None), ("static", g), (None, None)):
            out = sek.fp8_linear(x, f8, bias, out_features=96, activation_quant=mode,
                                 input_scale=input_scale, backend="torch")
            assert out.shape == (5, 96)
        assert sek.quantize_fp8(x, granularity="channel", backend="torch").data.shape == x.shape
        assert sek.quantize_nvfp4(x, g, backend="torch").data.shape == (5, 128)


def test_fp8_gemm_has_a_multicast_128x256_config_and_a_small_m_one(kernels):
    fp8 = {name: k for name, k in kernels.items() if "float_e4m3" in name}
    assert len(fp8) == 4  # {fp16, bf16} x {large M, small M}
    large = [k for k in fp8.values() if "QGMMA.64x256x32" in k["sass"]]
    small = [k for k in fp8.values() if "QGMMA.64x128x32" in k["sass"]]
    assert len(large) == 2 and len(small) == 2
    for k in large:  # 2x1 clusters: the weight tile is loaded once per cluster
        assert "UTMALDG.3D.MULTICAST" in k["sass"]
    for k in fp8.values():  # the persistent tile scheduler
        assert _count(k["ops"], "UTMALDG") > 0
    assert all("PersistentScheduler" in name for name in fp8)
