"""What the hepms commands print: one -q/-v policy for every subcommand, and clean line logs when
the output is not a terminal (a log file): no progress-bar frames, one line per block, phase,
epoch and trial."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "analyses" / "htautau" / "config" / "study.yaml"
COMMANDS = ("demo", "info", "generate", "train", "evaluate", "plot", "scan", "config", "select")


def run_logged(args: list[str], log: Path, cwd: Path) -> str:
    """Run ``hepms ARGS`` with stdout and stderr going to a file, as in a batch job; return it."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    with open(log, "w") as out:
        result = subprocess.run([sys.executable, "-m", "hepms.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                cwd=cwd, env=env, timeout=600)
    text = log.read_text()
    assert result.returncode == 0, text
    assert "\r" not in text, "progress-bar frames in a log file"
    return text


def config(path: Path, sample: Path, run_dir: Path, **extra) -> Path:
    cfg = {"extends": str(STUDY), "run_dir": str(run_dir), "data": {"path": str(sample)},
           "model": {"connection": "additional", "k": 2},
           "trainer": {"epochs": 2, "patience": 2, "batch_size": 32}, **extra}
    assert "progress" not in cfg  # the default (bars on): leaving them out is the non-TTY rule's job
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_every_subcommand_takes_quiet_and_verbose(capsys: pytest.CaptureFixture) -> None:
    from hepms.cli import main
    from hepms.generate.cli import build_parser as generate_parser
    from hepms.select.cli import build_parser as select_parser

    for command in COMMANDS:
        if command == "generate":
            text = generate_parser().format_help()
        elif command == "select":
            text = select_parser().format_help()
        else:
            with pytest.raises(SystemExit) as exit_info:
                main([command, "--help"])
            assert exit_info.value.code == 0
            text = capsys.readouterr().out
        assert "-q, --quiet" in text and "-v, --verbose" in text, command
        assert "warnings and errors only" in text and "debug messages" in text, command


def test_quiet_and_verbose_set_the_same_levels_everywhere() -> None:
    import argparse
    import logging

    from hepms.console import add_verbosity_arguments, setup_logging, show_progress

    parser = argparse.ArgumentParser()
    add_verbosity_arguments(parser)
    logger = logging.getLogger("hepms")
    before = logger.level
    try:
        for argv, level in (([], logging.INFO), (["-q"], logging.WARNING), (["-v"], logging.DEBUG)):
            args = parser.parse_args(argv)
            setup_logging(args)
            assert logger.level == level, argv
        assert not show_progress(parser.parse_args(["-q"]))
        assert not show_progress(parser.parse_args(["--no-progress"]))
        with pytest.raises(SystemExit):
            parser.parse_args(["-q", "-v"])  # contradictory
    finally:
        logger.setLevel(before)


def test_generate_log_file_has_one_line_per_block(tmp_path: Path) -> None:
    text = run_logged(["generate", str(tmp_path / "gen"), "--processes", "H", "--events", "10", "--block-size", "5",
                       "--mu", "0", "--workers", "1"], tmp_path / "generate.log", tmp_path)
    assert re.search(r"H block 0: 5 events done \(5/10", text), text
    assert re.search(r"H block 1: 5 events done \(10/10", text), text
    assert re.search(r"^wrote \S+\.root and manifest\.json to ", text, re.MULTILINE), text


def test_train_log_file_has_dataset_phase_and_epoch_lines(tiny_sample: Path, tmp_path: Path) -> None:
    cfg = config(tmp_path / "cfg.yaml", tiny_sample, tmp_path / "run")
    text = run_logged(["train", str(cfg)], tmp_path / "train.log", tmp_path)
    # what it is doing before the first epoch
    assert "building the dataset: reading events from" in text and "dataset built:" in text
    phases = re.findall(r"phase (\S+) \(", text)
    assert phases, text
    for phase in phases:  # every epoch of every phase is one line that stays
        epochs = re.findall(rf"{re.escape(phase)} epoch (\d+): train ", text)
        assert epochs == ["0", "1"], (phase, text)
    assert "trained " in text


def test_scan_log_file_has_one_line_per_trial(tiny_sample: Path, tmp_path: Path) -> None:
    scan = {"trials": 2, "studies": {"only": {"kind": "table", "runs": [
        {"label": "fixed", "set": {"trainer.balancer_options": {"weights": {"tau": 1.0, "event": 1.0}}}}]}}}
    cfg = config(tmp_path / "cfg.yaml", tiny_sample, tmp_path / "scan", scan=scan,
                 trainer={"epochs": 1, "patience": 1, "batch_size": 32})
    text = run_logged(["scan", str(cfg), "--only", "only", "--no-plots"], tmp_path / "scan.log", tmp_path)
    # one line per trial (this run shares its settings, hence its trials, with loss_balancing's)
    assert len(re.findall(r"^  \S.* trial \d+: AUC tau .* epochs", text, re.MULTILINE)) == 2, text
    assert len(re.findall(r"scan: \[\d/2\] .* trial \d+$", text, re.MULTILINE)) == 2, text
    assert "trials: 2 trained" in text
