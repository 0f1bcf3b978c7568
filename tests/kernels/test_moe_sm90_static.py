"""The static Hopper contract of the MoE CUDA kernels (DESIGN §8), read from the built extension's
SASS with the cuobjdump in the Triton wheel: no GPU needed.

* every grouped-GEMM kernel (3 schedules x 3 epilogues) runs on the tensor cores (HGMMA) fed by TMA
  (UTMALDG), with its wgmma pipelined: ptxas's C7510 fallback ("wgmma serialized") waits for each
  wgmma before the next, so every HGMMA would carry the scoreboard (gsb0) and no wait would leave
  one in flight (``WARPGROUP.DEPBAR.LE gsb0, 0x1``);
* no MoE kernel uses local memory (no spills);
* the bandwidth-bound gather and combine kernels issue 16-byte loads.

That no moe_ffn call needs a host read is test_moe_no_host_reads.py.
"""

import functools
import os
import re
import subprocess

import pytest

from star_elastic_kernels import _extension

GEMM_KERNELS = 9


@functools.cache
def moe_kernels() -> dict[str, dict]:
    """Mangled name -> {"local": bytes, "sass": [instructions]} of every star_elastic::moe kernel."""
    if _extension.unavailable_reason() is not None:
        pytest.skip(f"the CUDA extension is not built: {_extension.unavailable_reason()}")
    import triton

    from star_elastic_kernels import _C

    tool = os.environ.get("CUOBJDUMP") or os.path.join(
        os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        pytest.skip(f"no cuobjdump at {tool}")
    sass = subprocess.run([tool, "-sass", _C.__file__], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([tool, "-res-usage", _C.__file__], capture_output=True, text=True,
                           check=True).stdout
    local = {name: int(value) for name, value in
             re.findall(r"Function (\S+?):\s*\n\s*REG:\d+ STACK:\d+ SHARED:\d+ LOCAL:(\d+)", usage)}
    parts = re.split(r"\n\s*Function : (\S+)\n", sass)
    kernels = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if "12star_elastic3moe" not in name:
            continue
        instructions = re.findall(r"/\*[0-9a-f]{4,}\*/\s+((?:@!?U?P\w+\s+)?[A-Z][^;]*);", body)
        kernels[name] = {"local": local.get(name), "sass": instructions}
    return kernels


def opcodes(kernel: dict, prefix: str) -> list[str]:
    return [i for i in kernel["sass"] if re.sub(r"^@!?U?P\w+\s+", "", i).startswith(prefix)]


def gemm_kernels() -> dict[str, dict]:
    return {n: k for n, k in moe_kernels().items() if "grouped_gemm_kernel" in n}


def test_every_grouped_gemm_kernel_is_there():
    assert len(gemm_kernels()) == GEMM_KERNELS, sorted(gemm_kernels())


def test_grouped_gemms_use_tma_and_pipelined_hgmma():
    for name, kernel in gemm_kernels().items():
        hgmma = opcodes(kernel, "HGMMA")
        assert hgmma, f"no HGMMA in {name}"
        assert opcodes(kernel, "UTMALDG"), f"no TMA load in {name}"
        waited = [i for i in hgmma if "gsb0" in i]
        assert len(waited) < len(hgmma), f"every HGMMA waits (serialized wgmma, C7510) in {name}"
        in_flight = [i for i in opcodes(kernel, "WARPGROUP.DEPBAR") if "0x1" in i]
        assert in_flight, f"no wgmma batch left in flight in {name}"


def test_no_moe_kernel_spills():
    kernels = moe_kernels()
    assert len(kernels) > GEMM_KERNELS  # plus route, align, plan, gather, combine, tables
    for name, kernel in kernels.items():
        assert kernel["local"] == 0, f"{name} uses {kernel['local']} bytes of local memory"
        assert not opcodes(kernel, "STL") and not opcodes(kernel, "LDL"), name


@pytest.mark.parametrize("kernel", ["gather_kernel", "combine_kernel"])
def test_bandwidth_bound_kernels_issue_16_byte_loads(kernel):
    (name, found), = [(n, k) for n, k in moe_kernels().items() if kernel in n]
    assert [i for i in opcodes(found, "LDG") if ".128" in i], f"no 16-byte load in {name}"
