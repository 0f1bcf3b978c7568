"""Run a build command (``pip install -v ...``) showing its progress, not its noise.

    python scripts/build_progress.py --log .venv/build.log -- python -m pip install -v -e .

pip without ``-v`` hides the CUDA build behind "still running..." for minutes; with ``-v`` every
ninja step prints the whole nvcc command line. This shows one short line per ninja step,
``[3/17] csrc/ssm/scan.cu  (2:41)`` (``[finished/total]``, the file, the time since the start), the
link step, setup.py's own ``star-elastic-kernels:`` lines, errors and pip's result; the full
output goes to the log. The exit status is the command's; when it fails, the end of the log is
shown too.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

NINJA_STEP = re.compile(r"^\s*\[(\d+)/(\d+)\]\s+(.*)$")
SHOWN = re.compile(r"^\s*(star-elastic-kernels:|Successfully (installed|built)|ERROR:|FAILED:|ninja: build stopped)")
AN_ERROR = re.compile(r"(\berror\b|\bError\b|undefined reference|No such file)")
SOURCE_SUFFIXES = (".cu", ".cpp", ".cc", ".cxx", ".c")
TAIL_LINES = 40


def _relative(path: str) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return path


def summarize(line: str, elapsed: float) -> str | None:
    """The short line to show for one line of build output, or None to keep it in the log only."""
    clock = f"({int(elapsed // 60)}:{int(elapsed % 60):02d})"
    step = NINJA_STEP.match(line)
    if step:
        done, total, command = step.groups()
        # torch's ninja rules compile "... -c $in -o $out ..." (its flags may hold another -c)
        words = command.split()
        sources = [word for word in words if word.endswith(SOURCE_SUFFIXES)]
        source = sources[0] if sources else words[0]
        return f"[{done}/{total}] {_relative(source)}  {clock}"
    words = line.split()
    if words and words[0].endswith(("g++", "c++", "gcc", "clang++")) and "-shared" in words and "-o" in words[:-1]:
        return f"linking {Path(words[words.index('-o') + 1]).name}  {clock}"
    if SHOWN.match(line) or AN_ERROR.search(line):
        return line.strip()
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--log", required=True, type=Path, help="where the full output goes")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to run after --")
    args.log.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with args.log.open("w") as log, subprocess.Popen(command, stdout=subprocess.PIPE,
                                                     stderr=subprocess.STDOUT, text=True,
                                                     errors="replace", bufsize=1) as process:
        for line in process.stdout:
            log.write(line)
            log.flush()
            tail.append(line.rstrip("\n"))
            shown = summarize(line, time.monotonic() - start)
            if shown is not None:
                print(shown, flush=True)
    status = process.returncode
    if status != 0:
        print(f"\nthe build failed (exit status {status}); the last {len(tail)} lines of {args.log}:",
              *tail, sep="\n", flush=True)
    print(f"full build log: {args.log}", flush=True)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # our reader left (| head): stop quietly, the build with us
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
