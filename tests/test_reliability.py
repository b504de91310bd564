"""Reliability: no stale results, no crash on read-only buffers, sound concurrency,
clean errors on corrupt inputs. One section per case; crash cases run in a subprocess
so that a segfault fails the test instead of killing pytest."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import awkward as ak
import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hepms
from hepms import _reference
from hepms.config import ConfigError, validate
from hepms.data import toy_dataset
from hepms.nn import DeepSets, MultiStep
from hepms.train import Trainer, TrainConfig
from hepms.train.trainer import CheckpointError

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "analyses" / "htautau" / "config" / "study.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _run_python(code: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (a crash there is a failed assertion here)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=full_env)


# ================================================================================================
# Wrong results: checkpoints carry what produced them and are discarded on any mismatch
# ================================================================================================
def _tiny_trainer(tmp: Path, tau_options=None, **config) -> Trainer:
    model = MultiStep(8, 4, seed=0, tau_options=tau_options)
    options = dict(max_epochs=3, batch_size=16, progress=False, seed=5, checkpoint_dir=str(tmp))
    options.update(config)
    return Trainer(model, **options)


def _data(seed: int = 11):
    return toy_dataset(48, seed=seed), toy_dataset(24, seed=seed + 1)


@pytest.fixture(scope="module")
def interrupted_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint after 1 of 3 epochs, made with identity {"settings": "A", "data": "X"}."""
    folder = tmp_path_factory.mktemp("ckpt")
    train, val = _data()
    history = _tiny_trainer(folder).fit(train, val, stop_after=1, identity={"settings": "A", "data": "X"})
    assert history.interrupted and (folder / "checkpoint.pt").is_file()
    return folder / "checkpoint.pt"


def _resume(checkpoint: Path, tmp: Path, *, tau_options=None, data_seed=11, identity=None, **config):
    target = tmp / "checkpoint.pt"
    if checkpoint != target:
        shutil.copy(checkpoint, target)
    train, val = _data(data_seed)
    trainer = _tiny_trainer(tmp, tau_options=tau_options, **config)
    return trainer.fit(train, val, resume_from=target, stop_after=1,
                       identity={"settings": "A", "data": "X"} if identity is None else identity)


def test_resume_with_same_model_data_and_identity(interrupted_checkpoint: Path, tmp_path: Path) -> None:
    history = _resume(interrupted_checkpoint, tmp_path)
    assert [row["epoch"] for row in history.epochs] == [0, 1]  # epoch 0 from the checkpoint


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(tau_options={"block_activation": "relu"}), "another model configuration"),  # same shapes
        (dict(data_seed=99), "other training/validation data"),
        (dict(identity={"settings": "A", "data": "Y"}), "other settings or another data fingerprint"),
        (dict(identity={"settings": "B", "data": "X"}), "other settings or another data fingerprint"),
    ],
    ids=["model", "data", "fingerprint", "settings"],
)
def test_checkpoint_of_other_model_data_or_settings_is_refused(
    interrupted_checkpoint: Path, tmp_path: Path, change: dict, reason: str
) -> None:
    with pytest.raises(CheckpointError, match=reason):
        _resume(interrupted_checkpoint, tmp_path, **change)


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "not_a_dict", "no_identity", "no_phase"])
def test_unreadable_checkpoint_names_the_file(interrupted_checkpoint: Path, tmp_path: Path, damage: str) -> None:
    target = tmp_path / "checkpoint.pt"
    data = interrupted_checkpoint.read_bytes()
    if damage == "truncated":
        target.write_bytes(data[: len(data) // 3])
    elif damage == "random":
        target.write_bytes(np.random.default_rng(0).bytes(4096))
    elif damage == "empty":
        target.write_bytes(b"")
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], target)
    else:  # an older hepms wrote no identity; or a key is missing
        state = torch.load(interrupted_checkpoint, weights_only=True)
        del state["identity" if damage == "no_identity" else "phase"]
        torch.save(state, target)
    with pytest.raises(CheckpointError, match=str(target).replace(".", r"\.")):
        _resume(target, tmp_path)


@pytest.fixture(scope="module")
def sample(tiny_sample: Path) -> Path:
    return tiny_sample


def _config(tmp: Path, sample: Path, **sections) -> dict:
    cfg = yaml.safe_load(STUDY.read_text())
    cfg.update({"run_dir": str(tmp / "run"), "progress": False})
    cfg.setdefault("data", {})["path"] = str(sample)
    cfg.setdefault("trainer", {}).update({"epochs": 2, "patience": 2, "batch_size": 64})
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    cfg.pop("extends", None)
    return validate(cfg)


def test_train_discards_a_checkpoint_of_other_data_or_model(sample: Path, tmp_path: Path, caplog) -> None:
    """`hepms train c.yaml` then `--set data.max_events=... --set model.tau={...}` used to log
    "resumed" and write the new fingerprint over the old weights."""
    from hepms.study.single import train_run

    cfg = _config(tmp_path, sample)
    first = train_run(cfg)
    assert first["status"] == "trained" and first["epochs"] == 2
    changed = _config(tmp_path, sample, data={"max_events": 150}, model={"tau": {"block_activation": "relu"}})
    with caplog.at_level(logging.WARNING, logger="hepms.study.runner"):
        second = train_run(changed)
    assert second["status"] == "trained" and not second["resumed"] and second["epochs"] == 2
    assert any("discarding" in r.message and "checkpoint.pt" in r.message for r in caplog.records)
    state = torch.load(Path(cfg["run_dir"]) / "model.pt", weights_only=True)
    assert state["network"]["config"]["tau_options"]["block_activation"] == "relu"


def test_corrupt_model_file_retrains_and_evaluate_names_it(sample: Path, tmp_path: Path, caplog) -> None:
    from hepms.model_file import load_model
    from hepms.study.single import train_run

    cfg = _config(tmp_path, sample, trainer={"epochs": 1})
    train_run(cfg)
    model_path = Path(cfg["run_dir"]) / "model.pt"
    model_path.write_bytes(model_path.read_bytes()[:100])  # truncated
    from hepms.generate.io import UnreadableFileError

    with pytest.raises(UnreadableFileError, match=r"model\.pt is unreadable .*hepms train --force"):
        load_model(Path(cfg["run_dir"]))
    with caplog.at_level(logging.WARNING):
        result = train_run(cfg)  # no crash in the up-to-date check: trains again
    assert result["status"] == "trained"
    assert any(str(model_path) in r.message for r in caplog.records)
    load_model(Path(cfg["run_dir"]))


def test_scan_retrains_trials_of_a_regenerated_sample_and_survives_corrupt_files(
    sample: Path, tmp_path: Path, caplog
) -> None:
    """A trial checkpoint of another sample is discarded (it used to be resumed: stale AUCs); a
    corrupt checkpoint or result.json costs a retrain, never the scan."""
    from hepms.study.dataset import prepare_data
    from hepms.study.runner import fit_trial, read_result, run_trial

    cfg = _config(tmp_path, sample, trainer={"epochs": 2})
    data = prepare_data(cfg, tmp_path / "cache", progress=False)
    folder = tmp_path / "trial_000"
    # An interrupted trial: a checkpoint after one epoch.
    from hepms.study.runner import build_model, train_config, trial_identity

    identity = {"settings": trial_identity(cfg, 1), "data_fingerprint": "regenerated-away"}
    Trainer(build_model(cfg, data, 1), train_config(cfg, 1, folder, False)).fit(
        data.train, data.val, stop_after=1, identity=identity)
    with caplog.at_level(logging.WARNING, logger="hepms.study.runner"):
        _, history, resumed = fit_trial(cfg, data, folder, 1, progress=False)
    assert not resumed and len(history.epochs) == 2
    assert any("discarding" in r.message and "data_fingerprint" in r.message for r in caplog.records)

    (folder / "checkpoint.pt").write_bytes(b"\x80\x02garbage")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hepms.study.runner"):
        result = run_trial(cfg, data, folder, 1, save_predictions_file=False, progress=False)
    assert result["status"] == "done" and not result["resumed"]
    assert any("unreadable" in r.message for r in caplog.records)

    (folder / "result.json").write_text('{"format": "hepms.res')  # truncated JSON
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hepms.study.runner"):
        assert read_result(folder, data.fingerprint) is None
    assert any("result.json" in r.message and "unreadable" in r.message for r in caplog.records)
    (folder / "result.json").write_text(json.dumps({**result, "seed": 7}))
    assert read_result(folder, data.fingerprint, seed=1) is None  # another scan.seed: redo
    assert read_result(folder, data.fingerprint, seed=7) is not None

    from hepms.generate.io import UnreadableFileError
    from hepms.study.runner import load_predictions

    bad = folder / "predictions.npz"
    bad.write_bytes(b"PK\x03\x04truncated")
    with pytest.raises(UnreadableFileError, match=r"predictions\.npz is unreadable"):
        load_predictions(bad)


def test_corrupt_files_in_a_trial_folder_do_not_abort_the_scan(sample: Path, tmp_path: Path, caplog) -> None:
    from hepms.study.plan import expand_studies
    from hepms.study.scan import run_scan, trial_folder

    cfg = _config(tmp_path, sample, scan={"trials": 1, "plots": False})
    first = expand_studies(cfg)[0]
    folder = trial_folder(Path(cfg["run_dir"]), first, 0)
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(np.random.default_rng(1).bytes(3000))
    (folder / "result.json").write_bytes(b"\x00\xff not json")
    with caplog.at_level(logging.WARNING):
        summary = run_scan(cfg, only=[first.ref])
    assert summary["trained"] == summary["total"] == summary["finished_trials"] >= 1
    assert json.loads((folder / "result.json").read_text())["status"] == "done"
    messages = " ".join(r.message for r in caplog.records)
    assert "result.json" in messages and "checkpoint.pt" in messages and "unreadable" in messages


# ================================================================================================
# Crashes: read-only buffers in to_jagged (subprocess: a segfault must fail, not kill pytest)
# ================================================================================================
def test_editing_values_of_a_read_only_memmap_does_not_crash(tmp_path: Path) -> None:
    path = tmp_path / "values.bin"
    np.arange(8, dtype=np.float32).tofile(path)
    proc = _run_python(f"""
        import numpy as np, awkward as ak, hepms
        m = np.memmap({str(path)!r}, dtype=np.float32, mode="r")
        j = hepms.to_jagged(ak.unflatten(ak.from_numpy(m), [3, 5]))
        j.values.mul_(2)
        one = hepms.to_jagged(ak.zip({{"a": ak.unflatten(ak.from_numpy(m), [3, 5])}}), fields=["a"])
        one.values.add_(1)
        import json
        print(json.dumps([j.values.flatten().tolist(), np.fromfile({str(path)!r}, dtype=np.float32).tolist()]))
    """)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    edited, on_disk = json.loads(proc.stdout.strip().splitlines()[-1])
    assert edited == [2.0 * i for i in range(8)]
    assert on_disk == [float(i) for i in range(8)]


@pytest.mark.parametrize("origin", ["memory", "ipc_file"])
def test_arrow_backed_values_are_not_mutated_in_place(tmp_path: Path, origin: str) -> None:
    pa = pytest.importorskip("pyarrow")
    source = pa.array([[1.0, 2.0], [3.0]])
    if origin == "ipc_file":  # memory-mapped from a file: an immutable buffer
        path = str(tmp_path / "a.arrow")
        table = pa.table({"x": source})
        with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
        source = pa.ipc.open_file(pa.memory_map(path)).read_all().column("x").chunk(0)
    array = ak.from_arrow(source)
    j = hepms.to_jagged(array, dtype=torch.float64)
    j.values.mul_(10)
    assert source.to_pylist() == [[1.0, 2.0], [3.0]]  # the Arrow buffer is untouched
    assert ak.to_list(array) == [[1.0, 2.0], [3.0]]
    assert j.values.flatten().tolist() == [10.0, 20.0, 30.0]


def test_writable_buffers_stay_zero_copy() -> None:
    data = np.arange(6, dtype=np.float32)
    j = hepms.to_jagged(ak.unflatten(ak.from_numpy(data), [2, 4]))
    assert j.values.data_ptr() == data.ctypes.data  # the copy is for read-only buffers only


# ================================================================================================
# Concurrency: trial locks and manifest updates, with real processes
# ================================================================================================
def _lock_worker(folder: str, rounds: int, holders, violations, start) -> None:
    from hepms.study import scan

    start.wait()
    for _ in range(rounds):
        if scan._acquire(Path(folder)):
            with holders.get_lock():
                holders.value += 1
                if holders.value > 1:
                    violations.value += 1
            time.sleep(0.0005)
            with holders.get_lock():
                holders.value -= 1
            scan._release(Path(folder))


def test_trial_lock_has_one_holder_at_a_time(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    holders, violations = ctx.Value("i", 0), ctx.Value("i", 0)
    start = ctx.Event()
    procs = [ctx.Process(target=_lock_worker, args=(str(tmp_path), 150, holders, violations, start))
             for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert violations.value == 0
    assert not (tmp_path / "lock").exists()  # every holder released its own lock


def test_lock_rules_fresh_stale_and_foreign(tmp_path: Path) -> None:
    from hepms.study import scan

    lock = tmp_path / "lock"
    lock.write_text("")  # fresh and empty: another process is between create and write
    assert not scan._acquire(tmp_path)
    old = time.time() - 3600
    os.utime(lock, (old, old))  # empty for an hour: left by a crash
    assert scan._acquire(tmp_path)
    scan._release(tmp_path)

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    import socket

    lock.write_text(f"{socket.gethostname()} {int(dead.stdout)} token")  # its process is gone
    assert scan._acquire(tmp_path)
    assert lock.read_text().split()[1] == str(os.getpid())
    scan._release(tmp_path)
    assert not lock.exists()

    lock.write_text(f"{socket.gethostname()} {os.getppid()} someone-else")  # alive
    assert not scan._acquire(tmp_path)
    scan._release(tmp_path)  # not ours: left alone
    assert lock.read_text().endswith("someone-else")
    lock.write_text("other-host 1 token")  # another host's lock is never stale
    assert not scan._acquire(tmp_path)


def _manifest_worker(run_dir: str, name: str, count: int, start) -> None:
    from hepms.study.scan import update_manifest

    start.wait()
    for i in range(count):
        update_manifest(Path(run_dir), "scan", {"x": 1},
                        invocation={"id": f"{name}-{i}", "host": "elsewhere", "status": "finished"})


def test_concurrent_manifest_updates_are_all_kept(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    procs = [ctx.Process(target=_manifest_worker, args=(str(tmp_path), f"p{k}", 40, start)) for k in range(2)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert len(manifest["invocations"]) == 80
    assert not list(tmp_path.glob(".manifest.json.partial-*"))


def test_scan_rechecks_the_result_after_taking_the_lock(sample: Path, tmp_path: Path, monkeypatch) -> None:
    """Another scan may finish the trial between the first look and the lock: skip it then."""
    from hepms.study import scan

    cfg = _config(tmp_path, sample, scan={"trials": 1, "plots": False})
    looks: dict[Path, int] = {}

    def fake_read_result(folder, fingerprint=None, seed=None):
        looks[Path(folder)] = looks.get(Path(folder), 0) + 1
        return None if looks[Path(folder)] == 1 else {"status": "done"}

    def no_training(*args, **kwargs):
        raise AssertionError("the trial was finished by another scan; it must not be trained again")

    monkeypatch.setattr(scan, "read_result", fake_read_result)
    monkeypatch.setattr(scan, "run_trial", no_training)
    monkeypatch.setattr(scan, "build_outputs", lambda *a, **k: {})
    summary = scan.run_scan(cfg)
    assert summary["trained"] == 0 and summary["skipped"] == len(looks) > 0
    assert set(looks.values()) == {2}  # looked before and again after taking the lock
    assert not any((folder / "lock").exists() for folder in looks)  # and released it


# ================================================================================================
# Security: configuration-derived file names stay inside the run directory
# ================================================================================================
def test_study_names_cannot_write_outside_the_run_directory(tmp_path: Path) -> None:
    from hepms.study.plan import ensure_inside, slug
    from hepms.study.tables import write_tables

    from hepms.study.plan import expand_studies
    from hepms.study.tables import study_tables

    outside = tmp_path / "OUTSIDE"
    run = tmp_path / "a" / "b" / "run"
    studies = {str(outside): {"runs": [{"label": "x"}]}, "../../OUTSIDE": {"runs": [{"label": "y"}]},
               "..": {"runs": [{"label": "z"}]}}
    cfg = validate({"run_dir": str(run), "scan": {"studies": studies}})
    planned = expand_studies(cfg)
    tables = study_tables(cfg, planned, {r.key: [] for r in planned})
    written = write_tables(run / "tables", tables)
    assert len(written) == 2 * len(studies) + 1
    for path in written:
        assert run / "tables" in Path(path).resolve().parents, path
    assert not list(tmp_path.glob("OUTSIDE*")) and not list((tmp_path / "a").glob("OUTSIDE*"))
    assert slug("../../OUTSIDE") == "OUTSIDE" and "/" not in slug(str(outside))
    with pytest.raises(ValueError, match="outside"):
        ensure_inside(run, run / ".." / "x")
    clash = {"a/b": tables[".."], "a_b": tables[".."]}
    with pytest.raises(ConfigError, match="same file name"):
        write_tables(run / "tables", clash)


def test_figure_stems_from_configuration_are_slugged(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from hepms.study.plots import FigureStyle

    style = FigureStyle(outdir=tmp_path / "run" / "figures", formats=["png"])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure()
    (path,) = style.save(fig, "roc_tau_compare_../../../evil")
    assert path.parent == tmp_path / "run" / "figures" and path.is_file()


# ================================================================================================
# Errors that name the problem
# ================================================================================================
def _sample_file(sample: Path) -> Path:
    return sorted(sample.glob("*.root"))[0]


@pytest.mark.parametrize("damage", ["truncated", "not_root"])
def test_unreadable_root_file_is_named(sample: Path, tmp_path: Path, damage: str) -> None:
    from hepms.generate import read_events
    from hepms.generate.io import UnreadableFileError

    bad = tmp_path / "bad.root"
    data = _sample_file(sample).read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a ROOT file" * 50)
    with pytest.raises(UnreadableFileError, match=r"bad\.root is not a readable ROOT file \(truncated"):
        read_events(bad)


def test_missing_branch_names_file_and_branch(sample: Path, tmp_path: Path) -> None:
    """Generic: drop a branch the reader needs (whatever the schema calls it) and expect its name."""
    import uproot

    from hepms.generate import read_events
    from hepms.generate.io import MissingBranchError

    with uproot.open(_sample_file(sample)) as f:
        arrays = f["Events"].arrays(library="ak")
    needed = [b for b in arrays.fields if b.endswith(("_jetIdx", "_pt")) and not b.startswith(("Jet_", "Tau_"))]
    assert needed, arrays.fields
    for branch in needed[:2]:
        out = tmp_path / f"without_{branch}.root"
        with uproot.recreate(out) as f:
            f["Events"] = {k: arrays[k] for k in arrays.fields if k != branch}
        with pytest.raises(MissingBranchError) as info:
            read_events(out)
        assert str(out) in str(info.value) and repr(branch) in str(info.value)


def test_device_errors_name_the_key(monkeypatch) -> None:
    with pytest.raises(ConfigError, match=r"trainer\.device: 'gpu' is not a torch device"):
        validate({"trainer": {"device": "gpu"}})
    with pytest.raises(ValueError, match="'gpu' is not a torch device"):
        TrainConfig(device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="device 'cuda': .*(no CUDA GPU|without CUDA).*use device 'cpu'"):
        TrainConfig(device="cuda")
    monkeypatch.setattr(torch.version, "cuda", None)
    with pytest.raises(ValueError, match="built without CUDA"):
        TrainConfig(device="cuda:0")
    from hepms.study.runner import train_config

    cfg = validate({"trainer": {"device": "cuda"}})  # valid syntax: a GPU machine may run it
    with pytest.raises(ConfigError, match=r"^trainer\.device: device 'cuda'"):
        train_config(cfg, 0, None, False)


def test_cli_prints_device_error_without_traceback(sample: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    cfg = yaml.safe_load(STUDY.read_text())
    cfg.update({"run_dir": str(tmp_path / "run"), "progress": False, "data": {"path": str(sample)},
                "trainer": {"device": "cuda", "epochs": 1}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "hepms.cli", "train", str(path)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "trainer.device" in proc.stderr and "Traceback" not in proc.stderr


def test_int32_offsets_through_deepsets_and_multistep() -> None:
    values = torch.randn(7, 3)
    o64 = torch.tensor([0, 3, 3, 7])
    ds = DeepSets(3)
    torch.testing.assert_close(ds(values, o64.int()), ds(values, o64))
    model = MultiStep(3, 2, connection="additional", k=2, seed=1)
    jets = torch.randn(3, 2)
    events = torch.tensor([0, 2, 3])
    a = model(values, o64, events, jets)
    b = model(values, o64.int(), events.int(), jets)
    for x, y in zip(a, b):
        if isinstance(x, torch.Tensor):
            torch.testing.assert_close(x, y)


def test_coffea_missing_field_message_on_plain_awkward_arrays() -> None:
    from hepms.features import FeatureSpec, check_inputs

    spec = FeatureSpec()
    jets = ak.Array([[{"pt": 30.0, "eta": 0.0, "phi": 0.0, "mass": 1.0}], []])
    constituents = ak.Array([[[{"pt": 1.0, "eta": 0.0, "phi": 0.0, "mass": 0.0}]], []])
    with pytest.raises(ValueError, match=r"'charge', needed for constituent feature 'charge'.*"
                                         r"\['pt', 'eta', 'phi', 'mass'\]"):
        check_inputs(jets, constituents, spec)
    with pytest.raises(ValueError, match=r"jets lack field\(s\).*'phi'"):
        check_inputs(ak.Array([[{"pt": 30.0, "eta": 0.0, "mass": 1.0}]]), constituents[:1], spec)


@pytest.mark.parametrize(
    "values, dtype, pattern",
    [
        ([[1.0, float("nan")]], torch.int64, "NaN or infinity"),
        ([[float("inf")]], torch.int32, "NaN or infinity"),
        ([[300]], torch.int8, "wrap"),
        ([[2.0 ** 63]], torch.int64, "wrap"),
    ],
)
def test_lossy_integer_casts_are_refused(values, dtype, pattern) -> None:
    with pytest.raises(ValueError, match=pattern):
        hepms.to_jagged(ak.Array(values), dtype=dtype)


def test_uint64_above_int64_range_is_refused() -> None:
    big = ak.unflatten(ak.from_numpy(np.array([3, 2**63 + 1], dtype=np.uint64)), [2])
    with pytest.raises(ValueError, match=r"uint64, range \[3, 9223372036854775809\].*wrap"):
        hepms.to_jagged(big, dtype=torch.int64)
    fine = ak.unflatten(ak.from_numpy(np.array([3, 2**62], dtype=np.uint64)), [2])
    assert hepms.to_jagged(fine, dtype=torch.int64).values.flatten().tolist() == [3, 2**62]
    assert hepms.to_jagged(ak.Array([[1.7, -2.2]]), dtype=torch.int64).values.flatten().tolist() == [1, -2]


def _malformed_cases(n: int = 200):
    g = torch.Generator().manual_seed(17)
    for _ in range(n):
        rows = int(torch.randint(0, 10, (1,), generator=g))
        segments = int(torch.randint(0, 6, (1,), generator=g))
        values = torch.randn(rows, 2, generator=g, dtype=torch.float64)
        offsets = torch.randint(-3, rows + 4, (segments + 1,), generator=g)
        yield values, offsets


def test_fallback_clamps_malformed_offsets_like_the_kernels() -> None:
    if not hepms.ops.extension_available():
        pytest.skip("needs the compiled kernels to compare with")
    for values, offsets in _malformed_cases():
        for name in ("sum", "mean"):
            torch.testing.assert_close(getattr(_reference, f"segment_{name}_reference")(values, offsets),
                                       getattr(torch.ops.hepms, f"segment_{name}")(values, offsets))
        ours, arg = _reference.segment_max_reference(values, offsets)
        theirs, theirs_arg = torch.ops.hepms.segment_max(values, offsets)
        torch.testing.assert_close(ours, theirs)
        assert torch.equal(arg, theirs_arg), (offsets, arg, theirs_arg)
        n = values.shape[0]
        src = torch.randn(offsets.numel() - 1, 2, dtype=torch.float64)
        begin = offsets[:-1].clamp(0, n)
        end = torch.maximum(offsets[1:].clamp(max=n), begin)
        cover = torch.zeros(n, dtype=torch.long)
        for lo, hi in zip(begin.tolist(), end.tolist()):
            cover[lo:hi] += 1
        once = cover <= 1  # rows of overlapping segments get one of them: no promise which
        for mean in (False, True):
            ours = _reference.segment_gather_reference(src, offsets, n, mean)
            theirs = torch.ops.hepms.segment_gather(src, offsets, n, mean)
            torch.testing.assert_close(ours[once], theirs[once])


def test_fallback_with_validate_false_does_not_raise_in_a_fresh_process() -> None:
    values, offsets = torch.arange(10.0).view(5, 2), [0, 7, 2, -1]
    expected = {}
    if hepms.ops.extension_available():
        expected = {"sum": hepms.segment_sum(values, torch.tensor(offsets), validate=False).tolist(),
                    "max": hepms.segment_max(values, torch.tensor(offsets), validate=False)[1].tolist()}
    proc = _run_python(f"""
        import json, torch, hepms
        assert not hepms.ops.extension_available()
        v = torch.arange(10.0).view(5, 2).requires_grad_()
        o = torch.tensor({offsets})
        s = hepms.segment_sum(v, o, validate=False); s.sum().backward()
        m = hepms.segment_mean(v, o, validate=False); m.sum().backward()
        mx, arg = hepms.segment_max(v, o, validate=False); mx.sum().backward()
        print(json.dumps({{"sum": s.tolist(), "max": arg.tolist()}}))
    """, env={"HEPMS_DISABLE_EXTENSION": "1", "HEPMS_REQUIRE_EXTENSION": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    if expected:
        assert got == expected


# ================================================================================================
# Property-based: random configurations through the resume logic and the jagged bridge
# ================================================================================================
_CHANGES = st.fixed_dictionaries({
    "model": st.booleans(), "data": st.booleans(), "identity": st.booleans(), "lr": st.booleans(),
    "damage": st.sampled_from([None, None, None, "truncate", "bytes"]),
    "cut": st.floats(0.0, 0.99),
})


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(changes=_CHANGES)
def test_property_resume_iff_nothing_changed(interrupted_checkpoint: Path, tmp_path_factory, changes) -> None:
    tmp = tmp_path_factory.mktemp("prop")
    target = tmp / "checkpoint.pt"
    data = interrupted_checkpoint.read_bytes()
    if changes["damage"] == "truncate":
        target.write_bytes(data[: int(len(data) * changes["cut"])])
    elif changes["damage"] == "bytes":
        target.write_bytes(np.random.default_rng(int(changes["cut"] * 1e6)).bytes(1000))
    else:
        target.write_bytes(data)
    kwargs = {}
    if changes["model"]:
        kwargs["tau_options"] = {"block_activation": "relu"}
    if changes["data"]:
        kwargs["data_seed"] = 12
    if changes["identity"]:
        kwargs["identity"] = {"settings": "A", "data": "Z"}
    if changes["lr"]:
        kwargs["lr"] = 5e-3
    stale = changes["damage"] is not None or any(changes[k] for k in ("model", "data", "identity", "lr"))
    if stale:
        with pytest.raises(CheckpointError, match=str(target).replace(".", r"\.")):
            _resume(target, tmp, **kwargs)
    else:
        history = _resume(target, tmp, **kwargs)
        assert history.epochs[0]["epoch"] == 0 and len(history.epochs) == 2


_OVERRIDES = st.fixed_dictionaries({
    "model.k": st.sampled_from([1, 2, 3]),
    "model.tau": st.sampled_from([{}, {"block_activation": "relu"}, {"pool": ["sum"]}]),
    "data.max_events": st.sampled_from([None, 500]),
    "trainer.lr": st.sampled_from([1e-3, 3e-3]),
    "trainer.device": st.sampled_from(["cpu", "cuda"]),  # where it runs: not part of the identity
    "seed": st.sampled_from([1, 2]),
})


@settings(max_examples=25, deadline=None)
@given(a=_OVERRIDES, b=_OVERRIDES)
def test_property_trial_identity_covers_every_result_defining_setting(a, b) -> None:
    """Two configurations get the same checkpoint identity exactly when every setting that can
    change the result (the model configuration included) and the seed agree."""
    from hepms.config import set_key
    from hepms.study.runner import trial_identity

    def build(overrides):
        raw: dict = {}
        for key, value in overrides.items():
            set_key(raw, key, value)
        cfg = validate(raw, studies=False)
        return trial_identity(cfg, cfg["seed"])

    relevant = [k for k in a if k != "trainer.device"]
    assert (build(a) == build(b)) == all(a[k] == b[k] for k in relevant)


@st.composite
def _jagged_inputs(draw):
    """Counts for one or two list levels, the flat leaf values, and how to present the buffers."""
    two_levels = draw(st.booleans())
    outer = draw(st.lists(st.integers(0, 3), min_size=1, max_size=5)) if two_levels else None
    n_lists = sum(outer) if two_levels else draw(st.integers(1, 6))
    inner = draw(st.lists(st.integers(0, 4), min_size=n_lists, max_size=n_lists))
    leaf = st.floats(allow_nan=False, width=32, min_value=-1e6, max_value=1e6)
    values = draw(st.lists(leaf, min_size=sum(inner), max_size=sum(inner)))
    return outer, inner, values, draw(st.booleans()), draw(st.integers(0, 2))


@settings(max_examples=40, deadline=None)
@given(case=_jagged_inputs(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_property_jagged_bridge(case, dtype) -> None:
    """Random lists, one or two levels, sliced, in writable or read-only buffers: values and offsets
    match awkward, writable buffers are shared and editing never reaches a read-only source."""
    outer, inner, values, readonly, start = case
    flat = np.asarray(values, dtype=np.float32)
    offsets = [np.concatenate([[0], np.cumsum(inner)]).astype(np.int64)]
    if outer is not None:
        offsets.insert(0, np.concatenate([[0], np.cumsum(outer)]).astype(np.int64))
    for buffer in (flat, *offsets):
        buffer.flags.writeable = not readonly
    content = ak.contents.NumpyArray(flat)
    for offs in reversed(offsets):
        content = ak.contents.ListOffsetArray(ak.index.Index64(offs), content)
    source = ak.Array(content)
    source = source[min(start, len(source)):]
    before = flat.copy()
    j = hepms.to_jagged(source, dtype=dtype)
    expected = ak.to_numpy(ak.flatten(source, axis=None)).astype(np.float64)
    np.testing.assert_array_equal(j.values.double().flatten().numpy(), expected)
    if outer is None:
        assert j.counts.tolist() == ak.to_numpy(ak.num(source, axis=1)).tolist()
    else:
        assert j.outer_counts.tolist() == ak.to_numpy(ak.num(source, axis=1)).tolist()
        assert j.counts.tolist() == ak.to_numpy(ak.flatten(ak.num(source, axis=2))).tolist()
    j.values.add_(1)
    if readonly:
        np.testing.assert_array_equal(flat, before)
    elif dtype == torch.float32 and j.values.numel():
        assert ak.to_numpy(ak.flatten(source, axis=None))[0] == j.values[0, 0]  # shared memory
