"""scripts/build_progress.py, which ``make install`` runs pip through: the CUDA build shows ninja's
``[n/N]`` progress (one short line per compiled file), the full log is kept, the exit status is
pip's, and a failed build shows its errors and the end of the log."""

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "build_progress.py"

# What `pip install -v` prints around a build, in the shape torch's ninja build and setuptools print
# it (copied in form from a real `pip wheel -v` of a two-file torch CppExtension: the compile line
# really carries "-c -c").
PIP_LOG = f"""\
Using pip 25.0 from {ROOT}/.venv/lib/python3.11/site-packages/pip (python 3.11)
Obtaining file://{ROOT}
  Running command Checking if build backend supports build_editable
  star-elastic-kernels: building the CUDA extension for sm_90a
  running build_ext
  [1/3] c++ -MMD -MF {ROOT}/build/temp.linux-x86_64-cpython-311/csrc/torch_bindings.o.d -pthread -O3 -I{ROOT}/csrc -c -c {ROOT}/csrc/torch_bindings.cpp -o {ROOT}/build/temp.linux-x86_64-cpython-311/csrc/torch_bindings.o -DTORCH_EXTENSION_NAME=_C
  [2/3] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile --dependency-output {ROOT}/build/temp/csrc/ssm/scan.o.d -I{ROOT}/csrc -c {ROOT}/csrc/ssm/scan.cu -o {ROOT}/build/temp/csrc/ssm/scan.o -O3 -gencode arch=compute_90a,code=sm_90a
  {ROOT}/csrc/ssm/scan.cu(12): warning #177-D: variable "unused" was declared but never referenced
  [3/3] /usr/local/cuda/bin/nvcc --generate-dependencies-with-compile --dependency-output x.o.d -c {ROOT}/csrc/moe/route.cu -o x.o
  x86_64-linux-gnu-g++ -pthread -shared build/temp/csrc/torch_bindings.o build/temp/csrc/ssm/scan.o -o build/lib/star_elastic_kernels/_C.cpython-311-x86_64-linux-gnu.so
  copying build/lib/star_elastic_kernels/_C.cpython-311-x86_64-linux-gnu.so -> star_elastic_kernels
Successfully installed star-elastic-kernels-0.1.0
"""


def run(tmp_path, log_text: str, status: int) -> tuple[subprocess.CompletedProcess, Path]:
    fake_pip = tmp_path / "fake_pip.py"
    fake_pip.write_text(textwrap.dedent(f"""
        import sys
        sys.stdout.write({log_text!r})
        sys.exit({status})
    """))
    log = tmp_path / "build.log"
    result = subprocess.run([sys.executable, str(SCRIPT), "--log", str(log), "--",
                             sys.executable, str(fake_pip)], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    return result, log


def test_a_build_shows_one_short_line_per_ninja_step_and_keeps_the_log(tmp_path):
    result, log = run(tmp_path, PIP_LOG, 0)
    assert result.returncode == 0, result.stderr
    shown = result.stdout.splitlines()
    steps = [line for line in shown if line.startswith("[")]
    assert [step.split()[:2] for step in steps] == [["[1/3]", "csrc/torch_bindings.cpp"],
                                                    ["[2/3]", "csrc/ssm/scan.cu"],
                                                    ["[3/3]", "csrc/moe/route.cu"]]
    assert all(len(line) < 100 for line in shown), shown
    assert "star-elastic-kernels: building the CUDA extension for sm_90a" in shown
    assert any(line.startswith("linking") and "_C.cpython-311" in line for line in shown)
    assert "Successfully installed star-elastic-kernels-0.1.0" in shown
    assert "warning #177-D" not in result.stdout and "-gencode" not in result.stdout
    assert log.read_text() == PIP_LOG  # everything, unfiltered
    assert str(log) in result.stdout


def test_a_failed_build_shows_the_errors_and_the_end_of_the_log_and_fails(tmp_path):
    failing = PIP_LOG.split("  [3/3]")[0] + (
        f"  {ROOT}/csrc/moe/route.cu(40): error: identifier \"oops\" is undefined\n"
        "  FAILED: build/temp/csrc/moe/route.o\n"
        "  ninja: build stopped: subcommand failed.\n"
        "  error: subprocess-exited-with-error\n")
    result, log = run(tmp_path, failing, 1)
    assert result.returncode == 1
    assert 'csrc/moe/route.cu(40): error: identifier "oops" is undefined' in result.stdout
    assert "FAILED: build/temp/csrc/moe/route.o" in result.stdout
    assert str(log) in result.stdout
    assert log.read_text() == failing


def test_the_makefile_installs_through_it_verbosely():
    makefile = (ROOT / "Makefile").read_text()
    [recipe] = [line for line in makefile.splitlines() if "pip install" in line and " -e ." in line]
    assert "pip install -v" in recipe
    assert "scripts/build_progress.py" in makefile
