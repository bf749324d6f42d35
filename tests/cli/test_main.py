"""The `megatiny` command: subcommand dispatch, `python -m megatiny`, and the tools/ scripts."""
from __future__ import annotations

import importlib
import re
import runpy
import sys

import pytest

import megatiny.cli
from megatiny.cli import COMMANDS, main, split_launcher_args
from tests.helpers import REPO_ROOT, run_command


def test_python_m_megatiny_help_lists_every_subcommand():
    result = run_command([sys.executable, "-m", "megatiny", "--help"], timeout=60,
                         env={"PYTHONPATH": str(REPO_ROOT)})
    assert result.returncode == 0, result.stdout
    for name in ("preprocess", "train-tokenizer", "train", "convert", "evaluate", "generate", "report",
                 "inspect", "merge"):
        assert f"\n  {name} " in result.stdout, name
    assert "tools/preprocess_data.py" in result.stdout


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_subcommand_and_tools_script_share_one_parser(name, capsys, monkeypatch):
    """`megatiny NAME --help` and `python tools/SCRIPT --help` print the same options."""
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    via_command = _from_usage(capsys.readouterr().out)
    assert via_command.startswith(f"usage: megatiny {name} ")
    script = REPO_ROOT / "tools" / COMMANDS[name].tool
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    via_script = _from_usage(capsys.readouterr().out)
    assert via_script.startswith(f"usage: {COMMANDS[name].tool} ")
    # Past the usage lines (wrapped to the program name's length) the two texts are identical.
    assert via_script.split("\n\n", 1)[1] == via_command.split("\n\n", 1)[1]


def _from_usage(text: str) -> str:
    """Help text from its usage line on (importing deepspeed may print a warning first)."""
    return text[text.index("usage: "):]


def test_the_console_script_names_the_dispatcher():
    """setup.py's `megatiny` entry point resolves to megatiny.cli.run, main with a fast exit (the
    quickstart runs it), as `python -m megatiny` does."""
    [spec] = re.findall(r'"megatiny=([\w.]+):(\w+)"', (REPO_ROOT / "setup.py").read_text())
    assert getattr(importlib.import_module(spec[0]), spec[1]) is megatiny.cli.run
    assert "run()" in (REPO_ROOT / "megatiny" / "__main__.py").read_text()


def test_unknown_command_and_no_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain"])
    assert exit_info.value.code == 2
    assert "unknown command 'pretrain'" in capsys.readouterr().err
    assert main([]) == 2
    assert "commands:" in capsys.readouterr().out


def test_deepspeed_launcher_local_rank_goes_to_the_subcommand():
    # `deepspeed --module megatiny train ...` runs `python -m megatiny --local_rank=N train ...`
    assert split_launcher_args(["--local_rank=1", "train", "--config", "x.yaml"]) == \
        (["--local_rank=1"], ["train", "--config", "x.yaml"])
    assert split_launcher_args(["--local_rank", "0", "train"]) == (["--local_rank", "0"], ["train"])
    assert split_launcher_args(["inspect", "--local_rank=1"]) == ([], ["inspect", "--local_rank=1"])


def test_train_reports_a_bad_config_through_the_dispatcher(tmp_path, capsys):
    bad = tmp_path / "run.yaml"
    bad.write_text("batch:\n  micro_batch_size: 0\n")
    assert main(["--local_rank=0", "train", "--config", str(bad)]) == 2
    assert "micro_batch_size" in capsys.readouterr().err
