"""Importing is silent; a missing CUDA extension is reported where it matters, once; pipes close quietly.

Each case runs in a fresh interpreter, with warnings switched to ``always`` so nothing is hidden
by Python's default filters, and (where the case needs it) with ``star_elastic_kernels._C``
made unimportable, as on a machine where it was never built.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONWARNINGS": "always", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "python"), os.environ.get("PYTHONPATH", "")])}
ENV.pop("STAR_ELASTIC_BACKEND", None)

BLOCK_EXTENSION = """
import sys, importlib.abc
class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "star_elastic_kernels._C":
            raise ImportError("simulated: no compiled extension")
sys.meta_path.insert(0, _Block())
"""


def run_python(code: str, *, without_extension: bool, **kwargs) -> subprocess.CompletedProcess:
    prelude = BLOCK_EXTENSION if without_extension else ""
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True,
                          text=True, env=ENV, timeout=300, cwd=ROOT, **kwargs)


@pytest.mark.parametrize("without_extension", [True, False], ids=["no-extension", "extension-as-built"])
def test_import_is_silent(without_extension):
    result = run_python("""
        import star_elastic_kernels, star_elastic_kernels.info, star_elastic, star_elastic.cli
        import star_elastic.slicing, star_elastic.elastic_checkpoint, star_elastic.generation
    """, without_extension=without_extension)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and result.stdout == ""


def test_cli_help_is_silent_without_the_extension():
    result = run_python("""
        from star_elastic.cli import main
        main(["--help"])
    """, without_extension=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "usage: star-elastic" in result.stdout


def test_missing_extension_is_reported_once_when_a_cuda_tensor_reaches_an_op():
    # Fake CUDA tensors reach the ops' backend choice without a GPU (nothing runs on a device).
    result = run_python("""
        import warnings
        import torch
        from torch._subclasses.fake_tensor import FakeTensorMode
        import star_elastic_kernels as sek

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sek.quantize_fp8(torch.ones(4, 32))            # CPU tensors: the reference, nothing to say
            assert not caught, [str(w.message) for w in caught]
            with FakeTensorMode():
                x = torch.empty(4, 32, device="cuda", dtype=torch.bfloat16)
                sek.quantize_fp8(x)
                sek.quantize_fp8(x)
                sek.fake_quantize_fp8(x)
        messages = [str(w.message) for w in caught if issubclass(w.category, sek.StarElasticWarning)]
        print(json.dumps(messages))
    """.replace("import warnings", "import json, warnings"), without_extension=True)
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout)
    assert len(messages) == 1, messages
    assert "quantize_fp8" in messages[0] and "CUDA tensors" in messages[0]
    assert "simulated: no compiled extension" in messages[0]
    assert "pip install -e . --no-build-isolation" in messages[0]


def test_an_explicit_cuda_request_still_explains_itself():
    result = run_python("""
        import torch, star_elastic_kernels as sek
        try:
            sek.quantize_fp8(torch.ones(3), backend="cuda")
        except sek.BackendUnavailableError as error:
            print("ERROR:", error)
    """, without_extension=True)
    assert result.returncode == 0, result.stderr
    assert "ERROR: quantize_fp8: backend 'cuda' is unavailable" in result.stdout
    assert "pip install -e . --no-build-isolation" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("as_json", [False, True], ids=["table", "json"])
def test_info_always_reports_the_missing_extension(as_json):
    result = run_python(f"""
        import star_elastic_kernels.info as info
        info.main({['--json'] if as_json else []})
    """, without_extension=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    if as_json:
        extension = json.loads(result.stdout)["extension"]
        assert extension["loaded"] is False and "simulated" in extension["problem"]
    else:
        assert "_C: not available: the CUDA extension failed to load (simulated" in result.stdout


def closed_pipe_run(argv: list[str]) -> subprocess.CompletedProcess:
    """Run ``argv`` with stdout a pipe whose reader has already gone (like ``| head`` finishing)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, text=True, env=ENV,
                              timeout=300, cwd=ROOT)
    finally:
        os.close(write_end)


def test_info_json_into_a_closed_pipe_exits_quietly():
    result = closed_pipe_run([sys.executable, "-m", "star_elastic_kernels.info", "--json"])
    assert result.stderr == ""
    assert result.returncode != 0  # the output did not arrive, as with any tool whose reader left


def test_transformers_and_torchao_import_warnings_are_not_shown():
    # Converting to transformers imports it (and, through it, torchao) for the first time.
    result = run_python("""
        from star_elastic.config import ElasticConfig
        from star_elastic.model import ElasticModel
        from star_elastic.hf import to_hf
        config = ElasticConfig(layer_pattern="M*", vocab_size=32, hidden_size=32, mamba_num_heads=4,
                               mamba_head_dim=8, num_attention_heads=2, num_key_value_heads=1,
                               attention_head_dim=8)
        to_hf(ElasticModel(config))
    """, without_extension=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "", result.stderr
