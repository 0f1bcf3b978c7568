"""The build's decisions: when the CUDA extension is built, for which archs, and the pure-Python
install that results when it is not."""

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_module(monkeypatch):
    for name in ("STAR_ELASTIC_SKIP_CUDA_BUILD", "STAR_ELASTIC_FORCE_CUDA_BUILD", "CUDA_HOME"):
        monkeypatch.delenv(name, raising=False)
    spec = importlib.util.spec_from_file_location("star_elastic_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines the helpers; setup() only runs as __main__
    return module


def test_source_list_is_shared_and_exists(setup_module):
    sources = setup_module.read_sources()
    assert "csrc/torch_bindings.cpp" in sources
    assert all((ROOT / s).is_file() for s in sources)
    assert "sources.txt" in (ROOT / "CMakeLists.txt").read_text()


def test_arch_flags(setup_module):
    assert setup_module.parse_archs("90a") == ["90a"]
    assert setup_module.parse_archs("sm_90a, 80") == ["90a", "80"]
    assert setup_module.gencode_flags(["90a", "90"]) == [
        "-gencode=arch=compute_90a,code=sm_90a",
        "-gencode=arch=compute_90,code=[sm_90,compute_90]",
    ]
    with pytest.raises(RuntimeError, match="cannot parse arch"):
        setup_module.parse_archs("hopper")


def test_skip_switch_wins(setup_module, monkeypatch):
    monkeypatch.setenv("STAR_ELASTIC_SKIP_CUDA_BUILD", "1")
    assert setup_module.decide_cuda_build() == (False, "STAR_ELASTIC_SKIP_CUDA_BUILD is set")


def test_no_nvcc_skips_or_fails_when_forced(setup_module, monkeypatch):
    monkeypatch.setattr(setup_module, "find_cuda_home", lambda: None)
    build, why = setup_module.decide_cuda_build()
    import torch

    if torch.version.cuda is None:
        assert not build and "CPU-only" in why
    else:
        assert not build and "nvcc was not found" in why
        monkeypatch.setenv("STAR_ELASTIC_FORCE_CUDA_BUILD", "1")
        with pytest.raises(RuntimeError, match="FORCE_CUDA_BUILD is set but nvcc was not found"):
            setup_module.decide_cuda_build()


def test_decision_never_looks_at_the_gpu(setup_module, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: pytest.fail("asked for a GPU"))
    setup_module.decide_cuda_build()


def test_cutlass_path_override(setup_module, monkeypatch, tmp_path):
    monkeypatch.setenv("CUTLASS_PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="cutlass.h is missing"):
        setup_module.cutlass_include_dirs()
    (tmp_path / "include" / "cutlass").mkdir(parents=True)
    (tmp_path / "include" / "cutlass" / "cutlass.h").write_text("")
    assert setup_module.cutlass_include_dirs()[0] == tmp_path / "include"


def test_pure_python_wheel_when_the_cuda_build_is_skipped(tmp_path):
    tracked = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    source = tmp_path / "src"
    for name in tracked:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-v", "--no-build-isolation", "--no-deps",
         "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=600,
        env={**__import__("os").environ, "STAR_ELASTIC_SKIP_CUDA_BUILD": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "CUDA extension skipped: STAR_ELASTIC_SKIP_CUDA_BUILD is set" in result.stdout + result.stderr
    (wheel,) = (tmp_path / "dist").glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "star_elastic_kernels/__init__.py" in names
    assert "star_elastic/__init__.py" in names
    assert "star_elastic_kernels/_build_status.json" in names
    assert not [n for n in names if n.endswith(".so")]
