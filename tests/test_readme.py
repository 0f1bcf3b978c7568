"""The README's examples are true: its op example runs (on the CPU) and its claims hold; every
command line it shows parses with the real CLI; it says how to reach the CLI after ``make demo``."""

import re
import shlex
from pathlib import Path

import torch

import star_elastic_kernels as sek
from star_elastic import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_the_ops_example_runs_and_its_nvfp4_claim_holds():
    [example] = [block for block in code_blocks("python") if "quantize_nvfp4" in block]
    namespace: dict = {}
    torch.manual_seed(0)
    exec(compile(example.replace('device="cuda"', 'device="cpu"'), "README.md", "exec"), namespace)
    w, q, child = namespace["w"], namespace["q"], namespace["child"]
    # the slice is views of the parent's bytes ...
    assert child.data.data_ptr() == q.data.data_ptr() and child.scale.data_ptr() == q.scale.data_ptr()
    # ... equal to quantizing the child's weights with the parent's global scale (the example
    # asserts that itself; check it independently of how the example phrases it)
    same = sek.quantize_nvfp4(w[:2048, :1024], global_scale=q.global_scale)
    assert torch.equal(child.data, same.data)
    assert torch.equal(child.scale.view(torch.uint8), same.scale.view(torch.uint8))
    # ... and not, in general, to quantizing them on their own: the qualifier is needed
    alone = sek.quantize_nvfp4(w[:2048, :1024])
    assert not torch.equal(alone.global_scale, q.global_scale)
    assert not torch.equal(alone.scale.view(torch.uint8), child.scale.view(torch.uint8))
    # the example states the condition in code that runs (and so cannot drift from the truth)
    assert "global_scale=q.global_scale" in example and "assert torch.equal(child.data" in example


def command_lines() -> list[list[str]]:
    """Every star-elastic command line of the README's bash blocks, as argv after the program."""
    commands = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if Path(words[0]).name == "star-elastic":
                commands.append(words[1:])
            elif "star_elastic.cli" in words:
                commands.append(words[words.index("star_elastic.cli") + 1:])
    return commands


def test_every_cli_command_in_the_readme_parses():
    commands = command_lines()
    assert {argv[0] for argv in commands} >= {"generate", "train"}
    parser = cli.build_parser()
    for argv in commands:
        if "--help" in argv:
            continue
        args = parser.parse_args(argv)  # exits (fails the test) on an unknown flag
        config = getattr(args, "config", None)
        if config and config.endswith(".toml"):
            assert (ROOT / config).is_file(), config


def test_readme_says_how_to_run_the_cli_after_make_demo():
    setup = README.split("## Set up and run", 1)[1].split("\n## ", 1)[0]
    assert ".venv/bin/star-elastic" in setup and "source .venv/bin/activate" in setup
    assert "≤ 15 min" not in README and "<= 15 min" not in README  # a promise without set-up time
