"""The configuration engine (hepms.config_engine) and the three configurations on it: the run config
(hepms.config), the selection study (hepms.select.config) and the generator (hepms.generate.config)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from hepms.config import load_config, schema, validate
from hepms.generate.config import GENERATION_KEYS, GenerationConfig
from hepms.config_engine import ConfigError, Key, check_value, describe, parse_override, read_yaml
from hepms.select.config import load_selection_config, selection_schema


def test_duplicate_yaml_keys_are_errors_naming_file_and_lines(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("trainer:\n  epochs: 3\nmodel:\n  k: 2\ntrainer:\n  patience: 2\n")
    with pytest.raises(ConfigError, match=r"run\.yaml:5: key 'trainer' given twice .*first on line 1"):
        load_config(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("trainer:\n  epochs: 3\n  epochs: 4\n")
    with pytest.raises(ConfigError, match=r"nested\.yaml:3: key 'epochs' given twice"):
        load_config(nested)
    # The same for the selection study and for a file reached through extends.
    with pytest.raises(ConfigError, match=r"run\.yaml:5"):
        load_selection_config(path)
    top = tmp_path / "top.yaml"
    top.write_text("extends: nested.yaml\n")
    with pytest.raises(ConfigError, match=r"nested\.yaml:3"):
        load_config(top)


def test_exponent_floats_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "run.yaml"
    path.write_text("trainer: {lr: 1e-3}\n")
    assert load_config(path)["trainer"]["lr"] == 1e-3
    assert load_config(None, ["trainer.lr=5e-4"])["trainer"]["lr"] == 5e-4
    assert parse_override("a=1E+2") == ("a", 100.0)
    # Strings that only look like numbers at a glance stay strings; ints stay ints.
    doc = tmp_path / "doc.yaml"
    doc.write_text("a: e5\nb: 1e\nc: 12\nd: '1e-3'\n")
    assert read_yaml(doc) == {"a": "e5", "b": "1e", "c": 12, "d": "1e-3"}
    sel = tmp_path / "select.yaml"
    sel.write_text("settings: {lr: 3e-3, alpha_lr: 1e-2}\n")
    config = load_selection_config(sel)
    assert config.settings.lr == 3e-3 and config.settings.alpha_lr == 1e-2


def test_network_options_are_checked_at_config_time() -> None:
    with pytest.raises(ConfigError, match=r"^model\.tau: phi: layer sizes must be positive"):
        validate({"model": {"tau": {"phi": [0]}}})
    with pytest.raises(ConfigError, match=r"^model\.event: rho: layer sizes must be positive"):
        validate({"model": {"event": {"rho": [16, -1]}}})
    with pytest.raises(ConfigError, match=r"^model\.tau\.widths: unknown key"):
        validate({"model": {"tau": {"widths": [8]}}})
    # In a study run, the error names the run (before any trial of the scan is trained).
    studies = {"bad": {"runs": [{"label": "zero", "set": {"model.event": {"phi": [0]}}}]}}
    with pytest.raises(ConfigError, match=r"scan\.studies\.bad\.runs\[0\]\.set: model\.event: phi"):
        validate({"scan": {"studies": studies}})
    validate({"model": {"tau": {"phi": [8], "blocks": 0, "pool": ["max"]}, "event": {"rho": [8]}}})


def test_trainer_device_of_every_study_run_is_checked_before_training(tmp_path: Path, monkeypatch) -> None:
    import torch

    from hepms.study.scan import run_scan

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = validate({
        "run_dir": str(tmp_path / "scan"), "data": {"path": str(tmp_path / "no-sample")},
        "scan": {"studies": {"s": {"runs": [{"label": "cpu", "set": {}},
                                            {"label": "gpu", "set": {"trainer.device": "cuda"}}]}}},
    })
    with pytest.raises(ConfigError, match=r"scan\.studies\.s \(run 'gpu'\): trainer\.device: device 'cuda'"):
        run_scan(cfg)
    assert not (tmp_path / "scan" / "manifest.json").exists()  # nothing was prepared or trained


def test_defaults_are_written_once() -> None:
    from hepms.train.trainer import TrainConfig

    trainer, default = schema()["trainer"], TrainConfig()
    assert trainer["lr"].default == default.lr and trainer["batch_size"].default == default.batch_size
    assert trainer["epochs"].default == default.max_epochs and trainer["patience"].default == default.patience
    generate = schema()["data"]["generate"]
    for name in ("events_per_process", "mu", "seed", "pileup_pool"):
        assert generate[name] is GENERATION_KEYS[name]
        assert generate[name].default == getattr(GenerationConfig(), name)
    assert tuple(GENERATION_KEYS["processes"].default) == GenerationConfig().processes
    # The selection study shares the data keys of the run config (same default split seed).
    assert selection_schema()["data"]["split_seed"] is schema()["data"]["split_seed"]
    assert load_selection_config({}).data["split_seed"] == validate({})["data"]["split_seed"] == 0


def test_precision_is_checked_and_enters_the_settings_hash_only_when_bfloat16() -> None:
    from hepms.config import settings_hash
    from hepms.study.plan import run_settings
    from hepms.study.runner import train_config

    with pytest.raises(ConfigError, match=r"trainer\.precision: 'float16' is not allowed; choose from "
                                          r"\['float32', 'bfloat16'\]"):
        validate({"trainer": {"precision": "float16"}})
    default, fp32 = validate({}), validate({"trainer": {"precision": "float32"}})
    bf16 = validate({"trainer": {"precision": "bfloat16"}})
    assert default["trainer"]["precision"] == "float32"
    # float32 trials keep their run keys (and records); bfloat16 is another configuration
    assert "precision" not in run_settings(fp32)["trainer"]
    assert settings_hash(run_settings(fp32)) == settings_hash(run_settings(default))
    assert run_settings(bf16)["trainer"]["precision"] == "bfloat16"
    assert settings_hash(run_settings(bf16)) != settings_hash(run_settings(fp32))
    assert train_config(bf16, 1, None, False).precision == "bfloat16"


def test_w1_zero_rule_is_one_rule() -> None:
    from hepms.train.trainer import TrainConfig

    with pytest.raises(ConfigError, match="trainer.balancer: strategy 'w1_zero' fixes the weights"):
        validate({"trainer": {"strategy": "w1_zero", "balancer": "uncertainty"}})
    with pytest.raises(ValueError, match="strategy 'w1_zero' fixes the weights"):
        TrainConfig(strategy="w1_zero", balancer_options={"weights": {"tau": 1.0, "event": 1.0}})


def test_typed_keys() -> None:
    spec = Key([1, 2], "sizes", list[int])
    assert check_value("a.b", spec, (3, 4.0)) == [3, 4]
    with pytest.raises(ConfigError, match=r"a\.b\[1\]: expected an integer, got 'x'"):
        check_value("a.b", spec, [1, "x"])
    with pytest.raises(TypeError, match="not supported"):
        Key(1, "string kinds are gone", "int")
    text = describe({"s": {"k": spec, "m": Key({}, "free", dict)}})
    assert "s.k = [1, 2]  (list[int])" in text and "s.m = {}  (mapping)" in text


def test_generation_settings_use_the_engine() -> None:
    GenerationConfig().validate()
    with pytest.raises(ConfigError, match=r"^mu: -1\.0 must be >= 0"):
        GenerationConfig(mu=-1.0).validate()
    with pytest.raises(ConfigError, match=r"^processes: 'W' is not allowed"):
        GenerationConfig(processes=("H", "W")).validate()
    assert [f.name for f in dataclasses.fields(GenerationConfig) if f.name != "detector"] == list(GENERATION_KEYS)
    # The selection study's data.generate: the generator's keys with a small sample's defaults.
    gen = load_selection_config({}).data["generate"]
    assert set(gen) == set(GENERATION_KEYS) and gen["events_per_process"] == 400
    with pytest.raises(ConfigError, match=r"data\.generate\.chs: expected true or false"):
        load_selection_config({"data": {"generate": {"chs": "yes"}}})


def test_docstring_examples_run() -> None:
    import doctest

    import hepms.config
    import hepms.config_engine

    for module in (hepms.config_engine, hepms.config):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_cli_reports_a_repeated_key_and_prints_exponent_floats(tmp_path: Path, capsys) -> None:
    from hepms.cli import main

    path = tmp_path / "run.yaml"
    path.write_text("trainer: {lr: 2e-4}\nplot: {dpi: 100}\nplot: {dpi: 200}\n")
    assert main(["config", str(path)]) == 2
    assert "run.yaml:3: key 'plot' given twice" in capsys.readouterr().err
    path.write_text("trainer: {lr: 2e-4}\n")
    assert main(["config", str(path)]) == 0
    assert "lr: 0.0002" in capsys.readouterr().out


def test_one_optimizer_factory() -> None:
    """Every optimizer of the package comes from hepms.train.optim.make_optimizer."""
    import torch

    from hepms.train.optim import make_optimizer

    repo = Path(__file__).resolve().parents[1]
    direct = [f"{p.relative_to(repo)}:{i}" for folder in ("hepms", "benchmarks") for p in (repo / folder).rglob("*.py")
              if p.name != "optim.py" for i, line in enumerate(p.read_text().splitlines(), 1)
              if "torch.optim.Adam(" in line or "optim.SGD(" in line]
    assert not direct, direct
    weight = torch.nn.Parameter(torch.ones(3))
    for fused in (False, True):
        optimizer = make_optimizer([{"params": [weight]}], 1e-2, fused=fused)
        assert isinstance(optimizer, torch.optim.Adam) and optimizer.param_groups[0]["lr"] == 1e-2
    with pytest.raises(ValueError, match="learning rate"):
        make_optimizer([weight], 0.0)
