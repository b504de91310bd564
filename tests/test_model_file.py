"""One model file from ``hepms train`` to every consumer: load_model, ``hepms evaluate``, the coffea
tagger and processor (eager and dask), with identical scores, and ``hepms export --format onnx``
in onnxruntime (the same scores to float32 rounding); the file is used unchanged.

Also: the feature spec's round trip and errors, and old (``hepms.model/1``) files, which are
refused with the way to convert them, and converted.
"""
from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ak = pytest.importorskip("awkward")
dask = pytest.importorskip("dask")
pytest.importorskip("coffea")

from hepms.cli import main  # noqa: E402
from hepms.data import build_dataset, split  # noqa: E402
from hepms.features import FeatureSpec  # noqa: E402
from hepms.model_file import FORMAT, load_model, upgrade_model_file  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "analyses" / "htautau" / "config" / "study.yaml"

pytestmark = pytest.mark.usefixtures("one_thread")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tiny_sample: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``hepms train`` (2 epochs) on the shared tiny sample."""
    folder = tmp_path_factory.mktemp("model_file")
    run_dir = folder / "run"
    config = folder / "cfg.yaml"
    config.write_text(yaml.safe_dump({
        "extends": str(STUDY), "run_dir": str(run_dir), "progress": False,
        "data": {"path": str(tiny_sample)},
        "trainer": {"epochs": 2, "patience": 2, "batch_size": 32},
        "model": {"k": 2},
    }))
    assert main(["train", str(config)]) == 0
    model = run_dir / "model.pt"
    return {"run_dir": run_dir, "model": model, "sha256": _sha256(model), "sample": tiny_sample,
            "config": yaml.safe_load((run_dir / "config.yaml").read_text())}


FILES = ("Htautau.root", "Ztautau.root")


def _events(sample: Path, mode: str, names: tuple[str, ...] = FILES):
    """NanoEvents of ``names`` (eager modes read one file at a time), events with jets only."""
    from coffea.nanoevents import NanoEventsFactory

    from hepms.generate.schema import HepmsNanoAODSchema

    files = {str(sample / name): "Events" for name in names}
    # One partition per file: the eager calls' batches, so the same bits (another chunking
    # changes the rows of each forward, hence the last bit of some scores).
    options = {"steps_per_file": 1} if mode == "dask" else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You have set steps_per_file")
        events = NanoEventsFactory.from_root(files, schemaclass=HepmsNanoAODSchema, mode=mode,
                                             **options).events()
    lib = ak if mode != "dask" else pytest.importorskip("dask_awkward")
    return events[lib.num(events.Jet, axis=1) >= 1]  # training dropped jet-less events


def test_the_train_file_gives_identical_scores_everywhere(run: dict) -> None:
    from hepms.coffea import MultiStepTagger
    from hepms.generate import read_events

    run_dir, model_file, sample = run["run_dir"], run["model"], run["sample"]
    trained = load_model(run_dir)  # the run directory ...
    assert trained.path == model_file and not trained.network.training
    assert load_model(model_file).spec == trained.spec  # ... or the file
    state = torch.load(model_file, weights_only=True)
    assert state["format"] == FORMAT
    spec = trained.spec
    assert spec == FeatureSpec.from_settings(run["config"]["data"])
    provenance = trained.provenance
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert provenance.data_fingerprint == manifest["data_fingerprint"]
    assert provenance.settings_hash and provenance.producer == "hepms train"
    assert provenance.hepms_version == __import__("hepms").__version__
    inference = trained.inference_model()

    # Raw features of every event, as training built them, file by file (the tagger's batches:
    # the same rows in one forward give the same bits).
    def scores(data):
        with torch.no_grad():
            return inference(data.constituents.values, data.constituent_offsets, data.jet_offsets,
                             data.jet_features)

    raw = build_dataset(read_events(sample, max_jets=None, max_constituents=None), spec)
    reference = [scores(build_dataset(read_events(sample / name), spec)) for name in FILES]
    tau_ref, event_ref = (torch.cat([r[i] for r in reference]) for i in (0, 2))

    # hepms evaluate, given the file: its test-set predictions are the same numbers.
    assert main(["evaluate", str(run_dir), "--model", str(model_file)]) == 0
    predictions = np.load(run_dir / "evaluation" / "predictions.npz")
    d = run["config"]["data"]
    test = split(raw, d["fractions"], seed=d["split_seed"])[2]  # the same permutation as evaluate
    tau_test, _, event_test, _ = scores(test)
    assert np.array_equal(predictions["event_logit"], event_test.double().numpy())
    assert np.array_equal(predictions["tau_logit"], tau_test.double().numpy())

    # The coffea tagger, from the run directory, eagerly on NanoEvents ...
    tagger = MultiStepTagger(run_dir, device="cpu")
    assert tagger.spec == spec
    per_file = [_events(sample, "virtual", (name,)) for name in FILES]
    eager = ak.concatenate([tagger(events.Jet, events.PFCands) for events in per_file])
    assert np.array_equal(ak.to_numpy(eager.event_logit), event_ref.numpy())
    per_event = raw.jet_offsets.diff()
    if int(per_event.max()) <= spec.max_jets:  # else the extra jets run as pseudo-events
        assert np.array_equal(ak.to_numpy(ak.flatten(eager.tau_logit)), tau_ref.numpy())
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(eager.tau_logit)), tau_ref.numpy(),
                               rtol=1e-5, atol=1e-6)
    # ... and lazily, from the file, through dask.
    lazy = _events(sample, "dask")
    out = MultiStepTagger(model_file, device="cpu")(lazy.Jet, lazy.PFCands)
    (computed,) = dask.compute(out, scheduler="sync")
    for field in ("tau_logit", "event_logit", "tau_score", "event_score"):
        assert ak.array_equal(computed[field], eager[field]), field

    # The example processor takes the run directory too, eager and dask alike.
    from test_coffea import _processor_module

    processor = _processor_module().HTauTauProcessor(run_dir, tagger_options={"device": "cpu"})
    eager_outs = [next(iter(processor.process(events).values())) for events in per_file]
    (lazy_out,) = dask.compute(processor.process(_events(sample, "dask")), scheduler="sync")[0].values()
    assert lazy_out["hists"]["event_score"].sum() == len(eager) > 0
    for name in ("tau_score", "event_score", "mvis"):
        eager_values = sum(out["hists"][name].values() for out in eager_outs)
        assert np.array_equal(eager_values, lazy_out["hists"][name].values()), name

    # ... and through `hepms export --format onnx` in onnxruntime (which needs no hepms): the same
    # scores to float32 rounding (onnxruntime sums in another order than our kernels).
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    onnx_file = run_dir / "exported" / "model.onnx"
    onnx_file.parent.mkdir()
    assert main(["export", str(run_dir), "--format", "onnx", "-o", str(onnx_file)]) == 0
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    for name, expected in zip(FILES, reference):
        data = build_dataset(read_events(sample / name), spec)
        out = session.run(None, {
            "constituents": data.constituents.values.numpy(),
            "constituent_offsets": data.constituent_offsets.numpy(),
            "jet_offsets": data.jet_offsets.numpy(), "jet_features": data.jet_features.numpy()})
        assert bool(out[-1])  # inputs_valid
        for got, want in zip(out[:4], expected):  # tau_logit, intermediate, event_logit, momentum
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-5, atol=1e-5)

    assert _sha256(model_file) == run["sha256"]  # used unchanged by everything above


def test_feature_spec_round_trip_and_errors() -> None:
    spec = FeatureSpec(jet_features=("log_pt", "eta"), max_jets=3, targets=("pt", "eta", "phi"))
    assert FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="format"):
        FeatureSpec.from_dict({**spec.to_dict(), "format": "hepms.features/0"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        FeatureSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="repeats"):
        FeatureSpec(jet_features=("eta", "eta"))
    with pytest.raises(ValueError, match="momentum_unit_gev"):
        FeatureSpec(momentum_unit_gev=0.0)
    with pytest.raises(ValueError, match="targets: unknown"):
        FeatureSpec(targets=("energy",))


def test_old_model_files_say_how_to_convert_and_are_converted(
    run: dict, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    current = load_model(run["model"])
    old_dir = tmp_path / "old_run"
    old_dir.mkdir()
    (old_dir / "config.yaml").write_text((run["run_dir"] / "config.yaml").read_text())
    state = torch.load(run["model"], weights_only=True)
    torch.save({  # what hepms train wrote before the feature spec (hepms.model/1)
        "format": "hepms.model/1", "identity": state["provenance"]["settings_hash"],
        "data_fingerprint": state["provenance"]["data_fingerprint"],
        "model_config": state["network"]["config"], "state_dict": state["state_dict"],
        "scaler": state["standardization"], "seed": 1, "epochs": 2,
    }, old_dir / "model.pt")
    with pytest.raises(ValueError, match=r"hepms\.model/1.*upgrade_model_file.*hepms train --force"):
        load_model(old_dir)
    assert main(["evaluate", str(run["run_dir"]), "--model", str(old_dir)]) == 1
    assert "upgrade_model_file" in capsys.readouterr().err
    upgrade_model_file(old_dir / "model.pt")
    upgraded = load_model(old_dir)
    assert upgraded.spec == current.spec
    assert upgraded.provenance.data_fingerprint == current.provenance.data_fingerprint
    for (name, a), b in zip(upgraded.network.state_dict().items(),
                            current.network.state_dict().values()):
        assert torch.equal(a, b), name
    with pytest.raises(FileNotFoundError, match="no model.pt"):
        load_model(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(OSError, match=r"junk\.pt is unreadable"):
        load_model(tmp_path / "junk.pt")


def test_group_by_jet_and_feature_tensors_flat_or_nested() -> None:
    from hepms.features import feature_tensors, group_by_jet

    pf = ak.Array([
        [{"pt": 1.0, "eta": 0.1, "phi": 0.2, "mass": 0.0, "charge": 1, "jetIdx": 1},
         {"pt": 3.0, "eta": 0.0, "phi": 0.1, "mass": 0.0, "charge": -1, "jetIdx": 0},
         {"pt": 2.0, "eta": 0.3, "phi": 0.0, "mass": 0.1, "charge": 0, "jetIdx": 1},
         {"pt": 2.0, "eta": 0.2, "phi": 0.3, "mass": 0.0, "charge": 1, "jetIdx": 1},
         {"pt": 9.0, "eta": 0.0, "phi": 0.0, "mass": 0.0, "charge": 0, "jetIdx": -1},
         {"pt": 8.0, "eta": 0.0, "phi": 0.0, "mass": 0.0, "charge": 0, "jetIdx": 2}],
        [],
    ])
    jets = ak.Array([[{"pt": 3.0, "eta": 0.0, "phi": 0.1, "mass": 0.5},
                      {"pt": 5.0, "eta": 0.2, "phi": 0.1, "mass": 1.0}], []])
    grouped = group_by_jet(pf, jets)  # -1 and an index past the event's jets are dropped
    assert grouped.pt.tolist() == [[[3.0], [2.0, 2.0, 1.0]], []]
    assert grouped.eta.tolist() == [[[0.0], [0.3, 0.2, 0.1]], []]  # ties keep the file order
    assert grouped.fields == ["pt", "eta", "phi", "mass", "charge"]
    assert group_by_jet(pf, [2, 0], sort_by=None).pt.tolist() == [[[3.0], [1.0, 2.0, 2.0]], []]
    with pytest.raises(ValueError, match="jet_counts"):
        group_by_jet(pf, [2])

    spec = FeatureSpec(max_jets=1, max_constituents=2)
    flat = feature_tensors(jets, pf, spec)
    nested = feature_tensors(jets, grouped, spec)
    assert torch.equal(flat.constituents.values, nested.constituents.values)
    assert torch.equal(flat.jet_features, nested.jet_features)
    assert flat.jet_offsets.tolist() == [0, 1, 1]  # the leading jet only (max_jets=1)
    assert flat.constituent_offsets.tolist() == [0, 2]  # its two leading constituents
    assert flat.jets.pt.tolist() == [[5.0], []]
    every = feature_tensors(jets, pf, spec, select_jets=False)
    assert every.jet_offsets.tolist() == [0, 2, 2] and every.jets.pt.tolist() == [[3.0, 5.0], []]
