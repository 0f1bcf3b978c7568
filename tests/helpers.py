"""Helpers shared by the test modules."""

import pytest


def backend_cases(with_cuda_backend: bool = True):
    """pytest params (backend, device) for every backend x device this suite can exercise."""
    cases = [
        pytest.param("torch", "cpu", id="torch-cpu"),
        pytest.param("triton", "cpu", id="triton-cpu", marks=pytest.mark.interpreter),
        pytest.param("torch", "cuda", id="torch-cuda", marks=pytest.mark.gpu),
        pytest.param("triton", "cuda", id="triton-cuda", marks=pytest.mark.gpu),
    ]
    if with_cuda_backend:
        cases.append(pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.gpu))
    return cases
