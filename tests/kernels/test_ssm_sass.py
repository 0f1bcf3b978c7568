"""The static Hopper contract of the SSM CUDA kernels, read from the built extension's SASS (no GPU
needed; DESIGN §8, issue 13 item 5).

The SASS and the resource usage come from the ``cuobjdump`` that ships in the Triton wheel. A
kernel can be right on the CPU (the host impls run its per-thread code) and still be built far
below the roofline; these facts are what can be checked without a GPU:

* the decode step (bandwidth-bound) issues 16-byte loads in every unit-stride instantiation;
* no SSM kernel spills to local memory (no stack frame, no STL/LDL).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from star_elastic_kernels import _extension

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(_extension.unavailable_reason() is not None,
                       reason="the CUDA extension is not built here"),
]


def _cuobjdump() -> str:
    if os.environ.get("CUOBJDUMP"):
        return os.environ["CUOBJDUMP"]
    import triton

    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def _demangle(names: list[str]) -> dict[str, str]:
    try:
        out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True,
                             check=True).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return {n: n for n in names}
    return dict(zip(names, out))


@pytest.fixture(scope="module")
def ssm_kernels() -> dict[str, dict]:
    """demangled name -> {"usage": resource line, "ops": [opcodes]} for every star_elastic::ssm
    kernel of the built extension."""
    from star_elastic_kernels import _C

    library = _C.__file__
    tool = _cuobjdump()
    sass = subprocess.run([tool, "-sass", library], capture_output=True, text=True,
                          check=True).stdout
    usage = subprocess.run([tool, "-res-usage", library], capture_output=True, text=True,
                           check=True).stdout
    usage = dict(re.findall(r"Function (\S+?):\s*\n\s*(REG:.*)", usage))
    parts = re.split(r"\n\s*Function : (\S+)\n", sass)
    mangled = [parts[i] for i in range(1, len(parts), 2) if "star_elastic3ssm" in parts[i]]
    names = _demangle(mangled)
    kernels = {}
    for i in range(1, len(parts), 2):
        if parts[i] not in names:
            continue
        ops = re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]+)", parts[i + 1])
        kernels[names[parts[i]]] = {"usage": usage.get(parts[i], ""), "ops": ops}
    assert kernels, "no star_elastic::ssm kernels found in the extension"
    return kernels


def _count(ops: list[str], prefix: str, part: str = "") -> int:
    return sum(1 for o in ops if o.startswith(prefix) and part in o)


def test_no_ssm_kernel_spills(ssm_kernels):
    spilling = {name: k["usage"] for name, k in ssm_kernels.items()
                if re.search(r"(STACK|LOCAL):[1-9]", k["usage"])
                or _count(k["ops"], "STL") + _count(k["ops"], "LDL")}
    assert not spilling, spilling


def test_decode_unit_stride_instantiations_issue_16_byte_loads_before_stores(ssm_kernels):
    unit = {n: k for n, k in ssm_kernels.items() if "state_update_kernel" in n and ", true>" in n}
    assert len(unit) == 9, sorted(unit)  # 3 state dtypes x 3 activation dtypes
    for name, kernel in unit.items():
        ops = kernel["ops"]
        loads = [i for i, o in enumerate(ops) if o.startswith("LDG") and "128" in o]
        stores = [i for i, o in enumerate(ops) if o.startswith("STG") and "128" in o]
        assert loads and stores, name
        # a lane's 16-byte state loads are all issued before its first 16-byte state store
        assert max(loads) < min(stores), name
        regs = int(re.search(r"REG:(\d+)", kernel["usage"]).group(1))
        assert regs <= 170, (name, regs)  # __launch_bounds__(128, 3): 3 blocks per SM
