"""Every quant Triton kernel compiles for sm_90 (H200), checked on any machine, GPU or not.

The CPU tests run these kernels in Triton's interpreter, which accepts code the GPU compiler
rejects (e.g. a non-constexpr global read inside a kernel). Here each kernel is compiled ahead of
time for a Hopper target, in a subprocess because the interpreter switch is read at import.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _signature(pointers: dict, scalars: dict, constexprs: dict) -> dict:
    return {**pointers, **scalars, **{name: "constexpr" for name in constexprs}}


def cases():
    """(name, kernel, signature, constexprs) for every kernel and the configs the launchers use."""
    from star_elastic_kernels.triton import fp8_fake_quant, fp8_linear, fp8_quant
    from star_elastic_kernels.triton import nvfp4_linear, nvfp4_quant

    out = []
    for act in ("fp16", "bf16", "fp32"):
        for block_m, block_n, block_k, split in ((16, 64, 256, 4), (128, 128, 64, 1)):
            consts = {"HAS_BIAS": True, "SPLIT_K": split, "IEEE": act == "fp32",
                      "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k}
            sig = _signature(
                {"x_ptr": f"*{act}", "data_ptr": "*u8", "scale_ptr": "*u8", "g_ptr": "*fp32",
                 "bias_ptr": f"*{act}", "out_ptr": "*fp32" if split > 1 else f"*{act}"},
                {"M": "i32", "N": "i32", "K": "i32", "stride_xm": "i64", "stride_xk": "i64",
                 "stride_dn": "i64", "stride_sn": "i64", "stride_om": "i64"}, consts)
            out.append((f"nvfp4_linear-{act}-{block_m}", nvfp4_linear._nvfp4_linear_kernel, sig,
                        consts))
        for a_fp8 in (True, False):
            if a_fp8 and act == "fp32":
                continue
            consts = {"A_FP8": a_fp8, "A_SCALE_PER_ROW": True, "W_SCALE_PER_ROW": True,
                      "HAS_BIAS": True, "DOT_FP8": True, "IEEE": act == "fp32",
                      "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128 if a_fp8 else 64}
            sig = _signature(
                {"a_ptr": "*u8" if a_fp8 else f"*{act}", "a_scale_ptr": "*fp32", "w_ptr": "*u8",
                 "w_scale_ptr": "*fp32", "bias_ptr": f"*{act}", "out_ptr": f"*{act}"},
                {"M": "i32", "N": "i32", "K": "i32", "stride_am": "i64", "stride_ak": "i64",
                 "stride_wn": "i64", "stride_wk": "i64", "stride_om": "i64"}, consts)
            out.append((f"fp8_linear-{act}-a_fp8={a_fp8}", fp8_linear._fp8_linear_kernel, sig,
                        consts))
        rows = {"n_blocks": "i32", "stride_row": "i64", "stride_col": "i64"}
        out.append((f"nvfp4_quantize-{act}", nvfp4_quant._quantize_kernel, _signature(
            {"x_ptr": f"*{act}", "g_ptr": "*fp32", "data_ptr": "*u8", "scale_ptr": "*u8"}, rows,
            {"BLOCKS": 32}), {"BLOCKS": 32}))
        out.append((f"nvfp4_fake_quantize-{act}", nvfp4_quant._fake_quantize_kernel, _signature(
            {"x_ptr": f"*{act}", "g_ptr": "*fp32", "out_ptr": f"*{act}", "mask_ptr": "*i8"}, rows,
            {"BLOCKS": 32}), {"BLOCKS": 32}))
        out.append((f"nvfp4_dequantize-{act}", nvfp4_quant._dequantize_kernel, _signature(
            {"data_ptr": "*u8", "scale_ptr": "*u8", "g_ptr": "*fp32", "out_ptr": f"*{act}"},
            {"n_blocks": "i32", "stride_data_row": "i64", "stride_data_col": "i64",
             "stride_scale_row": "i64", "stride_scale_col": "i64"}, {"BLOCKS": 32}),
            {"BLOCKS": 32}))
        cols = {"cols": "i32", "stride_row": "i64", "stride_col": "i64", "scale_stride": "i32"}
        out.append((f"fp8_fake_quantize-{act}", fp8_fake_quant._fake_quantize_kernel, _signature(
            {"x_ptr": f"*{act}", "scale_ptr": "*fp32", "out_ptr": f"*{act}", "mask_ptr": "*i8"},
            cols, {"BLOCK": 1024}), {"BLOCK": 1024}))
        out.append((f"fp8_quantize-{act}", fp8_quant._quantize_kernel, _signature(
            {"x_ptr": f"*{act}", "scale_ptr": "*fp32", "out_ptr": "*u8"}, cols,
            {"BLOCK": 1024}), {"BLOCK": 1024}))
        out.append((f"fp8_dequantize-{act}", fp8_quant._dequantize_kernel, _signature(
            {"q_ptr": "*u8", "scale_ptr": "*fp32", "out_ptr": f"*{act}"}, cols,
            {"BLOCK": 1024}), {"BLOCK": 1024}))
        out.append((f"fp8_row_amax-{act}", fp8_quant._row_amax_kernel, _signature(
            {"x_ptr": f"*{act}", "amax_ptr": "*fp32"},
            {"cols": "i32", "stride_row": "i64", "stride_col": "i64"}, {"BLOCK": 1024}),
            {"BLOCK": 1024}))
    for name, kernel in (("fp8_row_scales", fp8_quant._row_scales_kernel),
                         ("fp8_tensor_scale", fp8_quant._tensor_scale_kernel)):
        out.append((name, kernel, _signature({"amax_ptr": "*fp32", "scale_ptr": "*fp32"},
                                             {"rows": "i32"}, {"BLOCK": 1024}), {"BLOCK": 1024}))
    return out


def main() -> int:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    failures = []
    for name, kernel, signature, constexprs in cases():
        try:
            triton.compile(ASTSource(fn=kernel, signature=signature, constexprs=constexprs),
                           target=GPUTarget("cuda", 90, 32))
        except Exception as error:  # noqa: BLE001 - report every failing kernel
            failures.append(f"{name}: {type(error).__name__}: {str(error)[:600]}")
    print("\n".join(failures) if failures else "all compiled")
    return 1 if failures else 0


@pytest.mark.skipif(sys.platform != "linux", reason="Triton's CUDA backend compiles on Linux")
def test_quant_triton_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c",
         "import sys, tests.kernels.test_quant_sm90_compile as m; sys.exit(m.main())"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
