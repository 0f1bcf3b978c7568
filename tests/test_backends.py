"""Backend selection, import hygiene and the info report."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import star_elastic_kernels as sek
from star_elastic_kernels import _backends, _extension
from star_elastic_kernels.quant.fp8 import QUANTIZE_SPEC

CPU = torch.device("cpu")


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def test_precedence_call_over_context_over_env(monkeypatch):
    monkeypatch.setenv(_backends.ENV_VAR, "triton")
    assert _backends.requested_backend() == "triton"
    with sek.use_backend("torch"):
        assert _backends.requested_backend() == "torch"
        with sek.use_backend("auto"):
            assert _backends.requested_backend() == "auto"
        assert _backends.requested_backend() == "torch"
        assert _backends.requested_backend("cuda") == "cuda"
    assert _backends.requested_backend() == "triton"
    monkeypatch.delenv(_backends.ENV_VAR)
    assert _backends.requested_backend() == "auto"


def test_unknown_backend_names_are_rejected(monkeypatch):
    with pytest.raises(ValueError, match="use_backend: unknown backend 'gpu'"):
        with sek.use_backend("gpu"):
            pass
    monkeypatch.setenv(_backends.ENV_VAR, "fastest")
    with pytest.raises(ValueError, match="STAR_ELASTIC_BACKEND: unknown backend 'fastest'"):
        sek.quantize_fp8(torch.ones(4))


def test_auto_runs_the_reference_on_cpu_tensors():
    assert _backends.select_backend(QUANTIZE_SPEC, CPU, torch.float32) == "torch"


def test_context_and_env_choices_reach_the_op(monkeypatch):
    calls = []
    real = _backends.select_backend

    def spy(spec, device, dtype, explicit=None):
        calls.append(real(spec, device, dtype, explicit))
        return calls[-1]

    monkeypatch.setattr(_backends, "select_backend", spy)
    with sek.use_backend("torch"):
        sek.quantize_fp8(torch.ones(4))
    monkeypatch.setenv(_backends.ENV_VAR, "torch")
    sek.quantize_fp8(torch.ones(4))
    assert calls == ["torch", "torch"]


def test_explicit_unavailable_backend_raises_instead_of_falling_back():
    with pytest.raises(sek.BackendUnavailableError, match="backend 'cuda' is unavailable"):
        with sek.use_backend("cuda"):
            sek.quantize_fp8(torch.ones(4))


def test_triton_on_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = _backends.unavailable_reason(QUANTIZE_SPEC, "triton", CPU, torch.float32)
    assert "TRITON_INTERPRET=1" in reason
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert _backends.unavailable_reason(QUANTIZE_SPEC, "triton", CPU, torch.float32) is None
    reason = _backends.unavailable_reason(QUANTIZE_SPEC, "triton", CPU, torch.bfloat16)
    assert "bfloat16" in reason


def test_missing_op_in_an_old_build_is_explained():
    spec = _backends.OpSpec("future_op", backends=("cuda", "torch"), cuda_ops=("_not_there",))
    reason = _backends.unavailable_reason(spec, "cuda", CPU)
    assert "_not_there" in reason or "not built" in reason or "failed to load" in reason
    assert "triton" in _backends.unavailable_reason(spec, "triton", CPU)


def test_import_does_not_initialise_cuda():
    result = run_python("""
        import torch, star_elastic_kernels
        assert not torch.cuda.is_initialized(), "import initialised CUDA"
        print("ok")
    """)
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout


def test_info_reports_versions_extension_and_op_table():
    result = run_python("import star_elastic_kernels.info as i; i.main(['--json'])")
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["torch"] == torch.__version__
    for op in ("quantize_fp8", "dequantize_fp8"):
        assert set(info["ops"][op]) == {"cuda", "triton", "torch"}
        assert info["ops"][op]["torch"]["status"] == "ready"
    table = run_python("import star_elastic_kernels.info as i; i.main([])")
    assert "quantize_fp8" in table.stdout and "_C:" in table.stdout


@pytest.mark.skipif(os.environ.get("STAR_ELASTIC_EXPECT_CUDA_EXTENSION") != "1",
                    reason="set STAR_ELASTIC_EXPECT_CUDA_EXTENSION=1 where _C must be built (CI)")
def test_extension_is_built_for_hopper_with_every_fp8_op():
    assert _extension.unavailable_reason() is None
    assert "90a" in _extension.built_archs()
    assert _extension.build_info()["cutlass_version"].startswith("4.")
    for spec in _backends.registered_ops().values():
        assert all(_extension.has_op(op) for op in spec.cuda_ops), spec.name


def test_auto_follows_each_ops_preference_order_on_cuda_tensors():
    # No GPU needed: for a CUDA device the triton and torch backends need nothing but Triton.
    cuda = torch.device("cuda")
    reference_first = _backends.OpSpec("order_probe_a", backends=("torch", "triton"))
    triton_first = _backends.OpSpec("order_probe_b", backends=("triton", "torch"))
    assert _backends.select_backend(reference_first, cuda, torch.float32) == "torch"
    assert _backends.select_backend(triton_first, cuda, torch.float32) == "triton"
    assert _backends.registered_ops()["ssd_scan"].backends[0] == "triton"
