"""Benchmark fixtures: machine metadata, GPU-synchronised timing and the memory-bandwidth floor.

Every benchmark here times GPU work, so without a GPU the whole suite skips with a reason (and
`pytest bench/ --benchmark-only` still exits 0). Timed targets synchronise the device, because
pytest-benchmark's clock is the host's; the CUDA-event median from `triton.testing.do_bench` is
recorded next to it in `extra_info`, with GB/s, TFLOP/s and the fraction of the floor.
"""

from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess

import pytest
import torch

HAS_GPU = torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if HAS_GPU:
        return
    skip = pytest.mark.skip(reason="benchmarks time GPU kernels; no CUDA GPU is visible here")
    for item in items:
        item.add_marker(skip)


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["torch_cuda"] = torch.version.cuda
    machine_info["triton"] = _version("triton")
    machine_info["python"] = platform.python_version()
    if HAS_GPU:
        machine_info["gpu"] = torch.cuda.get_device_name(0)
        machine_info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
        try:
            machine_info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            machine_info["driver"] = None
    from star_elastic_kernels import _extension

    machine_info["star_elastic_extension"] = _extension.build_info() or None


def pytest_benchmark_compare_machine_info(config, benchmarksession, machine_info, compared_benchmark):
    # Timings from another GPU model are not comparable.
    theirs = compared_benchmark["machine_info"].get("gpu")
    if theirs != machine_info.get("gpu"):
        benchmarksession.logger.warning(f"comparing runs from different GPUs: {theirs} vs "
                                        f"{machine_info.get('gpu')}")


@functools.cache
def copy_bandwidth_gbs() -> float:
    """Measured device-to-device copy bandwidth (bytes read + written per second), in GB/s."""
    import triton.testing

    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda").random_()
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    return 2 * src.numel() / (ms * 1e-3) / 1e9


@pytest.fixture
def gpu_bench(benchmark):
    """gpu_bench(fn, bytes_moved=..., flops=..., floor_bytes=...): time fn on the GPU.

    Records in extra_info: median_us (CUDA events), gbs, tflops, and floor_fraction = the time the
    unavoidable bytes (``floor_bytes``: each input read once, each output written once) take at the
    measured copy bandwidth, divided by the measured time.
    """
    import triton.testing

    def run(fn, *, bytes_moved=0, flops=0, floor_bytes=None):
        def synced():
            fn()
            torch.cuda.synchronize()

        benchmark.pedantic(synced, rounds=20, warmup_rounds=3, iterations=1)
        ms = triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median")
        seconds = ms * 1e-3
        info = benchmark.extra_info
        info["median_us"] = ms * 1e3
        info["gbs"] = bytes_moved / seconds / 1e9 if bytes_moved else None
        info["tflops"] = flops / seconds / 1e12 if flops else None
        floor_bytes = bytes_moved if floor_bytes is None else floor_bytes
        if floor_bytes:
            bandwidth = copy_bandwidth_gbs()
            info["copy_bandwidth_gbs"] = bandwidth
            info["floor_fraction"] = floor_bytes / (bandwidth * 1e9) / seconds
        return ms

    return run
