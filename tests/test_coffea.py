"""Tests of hepms.export and hepms.coffea: exports, the coffea/dask wrapper, the example processor.

One small generated sample (real Pythia 8 + FastJet, 2 x 120 events, <mu> = 5) and a model trained
on it for two epochs are shared by the module; the tests check plumbing (equal numbers along every
path, columns read, errors), not physics.
"""
from __future__ import annotations

import importlib.util
import json
import pickle
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

ak = pytest.importorskip("awkward")
dask = pytest.importorskip("dask")
dak = pytest.importorskip("dask_awkward")
pytest.importorskip("coffea")
pytest.importorskip("hist")
pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from coffea.nanoevents import NanoEventsFactory  # noqa: E402

import hepms  # noqa: E402
from hepms import coffea as hc  # noqa: E402
from hepms.data import build_dataset, prepare  # noqa: E402
from hepms.export import (  # noqa: E402
    InferenceModel,
    export_program,
    export_torchscript,
    load_export,
    model_metadata,
)
from hepms.features import (  # noqa: E402
    DEFAULT_CONSTITUENT_FEATURES,
    DEFAULT_JET_FEATURES,
    FeatureSpec,
)
from hepms.model_file import load_model, preprocessing, save_model  # noqa: E402
from hepms.generate.io import read_events  # noqa: E402
from hepms.generate.pipeline import generate  # noqa: E402
from hepms.generate.schema import HepmsNanoAODSchema  # noqa: E402
from hepms.nn import MultiStep, run  # noqa: E402
from hepms.train import Trainer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# The branches the model reads (8 constituent features incl. charge, 4 jet features).
MODEL_BRANCHES = {
    "nJet", "Jet_pt", "Jet_eta", "Jet_phi", "Jet_mass",
    "nPFCands", "PFCands_pt", "PFCands_eta", "PFCands_phi", "PFCands_mass", "PFCands_charge",
    "PFCands_jetIdx",
}


# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Htautau.root and Ztautau.root, 120 events each."""
    out = tmp_path_factory.mktemp("coffea") / "sample"
    generate(out, events_per_process=120, mu=5, pileup_pool=100, seed=7, workers=1,
             block_size=60, pileup_process="nondiffractive", progress=False)
    return [out / "Htautau.root", out / "Ztautau.root"]


@pytest.fixture(scope="module")
def trained(sample: list[Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A MultiStep (additional NN, k = 3) trained two epochs; its export and checkpoints."""
    folder = tmp_path_factory.mktemp("model")
    train, val, _, scaler = prepare(read_events(sample), seed=1)
    model = MultiStep(train.constituents.num_features, train.jet_features.shape[1],
                      connection="additional", k=3, seed=1)
    Trainer(model, max_epochs=2, batch_size=32, progress=False,
            checkpoint_dir=str(folder / "run")).fit(train, val,
                                                   preprocessing=preprocessing(FeatureSpec(), scaler))
    model.eval()
    inference = InferenceModel(model, scaler, FeatureSpec())
    path = export_torchscript(inference, folder / "model.pt")
    return {"model": model, "scaler": scaler, "inference": inference, "path": path,
            "checkpoint": folder / "run" / "checkpoint.pt", "folder": folder}


@pytest.fixture(scope="module")
def tagger(trained: dict) -> hc.MultiStepTagger:
    return hc.MultiStepTagger(trained["path"], device="cpu")


def _events(files: list[Path], mode: str = "virtual", steps_per_file: int = 1):
    spec = {str(f): "Events" for f in files}
    options = {"steps_per_file": steps_per_file} if mode == "dask" else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="You have set steps_per_file")
        return NanoEventsFactory.from_root(spec, schemaclass=HepmsNanoAODSchema, mode=mode,
                                           **options).events()


def _raw_data(files: list[Path], **options) -> "hepms.data.TauEventData":
    """The training pipeline's raw (unstandardised) features of every event, jet-less included,
    and of every jet (the tagger scores every jet; events with more than 8 jets do occur)."""
    options.setdefault("max_jets", 64)
    return build_dataset(read_events(files, max_jets=None, max_constituents=None),
                         FeatureSpec(min_jets=0, **options))


def _processor_module():
    """analyses/htautau/processor.py (not a package), imported under a unique name."""
    name = "hepms_tests_htautau_processor"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, ROOT / "analyses" / "htautau" / "processor.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------
def test_torchscript_round_trip_equals_python_model(trained: dict, sample: list[Path]) -> None:
    data = _raw_data(sample)
    args = (data.constituents.values, data.constituent_offsets, data.jet_offsets,
            data.jet_features)
    loaded = load_export(trained["path"])
    assert isinstance(loaded, torch.jit.ScriptModule)
    with torch.no_grad():
        python_out = trained["inference"](*args)
        script_out = loaded(*args)
        # The training pipeline: Standardizer, then the bare MultiStep.
        reference = run(trained["model"], trained["scaler"](data))
    for name, a, b in zip(("tau_logit", "intermediate", "event_logit", "momentum"),
                          script_out, python_out):
        assert torch.equal(a, b), name
    assert torch.equal(python_out[0], reference.tau_logit)
    assert torch.equal(python_out[1], reference.intermediate)
    assert torch.equal(python_out[2], reference.event_logit)
    # The two steps are exported too, and agree with forward.
    tau, intermediate, _ = loaded.upstream(args[0], args[1], args[3])
    assert torch.equal(tau, script_out[0])
    assert torch.equal(loaded.downstream(args[3], args[2], intermediate), script_out[2])

    meta = model_metadata(trained["path"])  # read from the archive without loading it
    assert meta == model_metadata(loaded)
    assert FeatureSpec.from_dict(meta["features"]) == FeatureSpec()
    assert meta["k"] == 3
    assert meta["hepms_version"] == hepms.__version__
    assert meta["model_config"] == trained["model"].config


def test_failed_export_leaves_no_file(trained: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A save that fails half-way (full disk, killed job) must not leave a truncated model under
    the final name, nor its hidden partial file; an existing model stays as it was."""
    target = tmp_path / "model.pt"
    target.write_bytes(b"previous model")

    def failing_save(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left"):
        save_model(target, trained["model"], FeatureSpec(), trained["scaler"])
    assert target.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_torch_export_program_round_trip(trained: dict, tagger, sample: list[Path]) -> None:
    path = export_program(trained["inference"], trained["folder"] / "model.pt2")
    loaded = load_export(path)
    assert model_metadata(loaded)["k"] == 3
    data = _raw_data(sample)
    with torch.no_grad():
        for part in (data, data[:1], data[3:4]):  # dynamic sizes, down to one event
            args = (part.constituents.values, part.constituent_offsets, part.jet_offsets,
                    part.jet_features)
            for a, b in zip(loaded(*args), trained["inference"](*args)):
                assert torch.equal(a, b)
    # The tagger runs the program as well as the TorchScript export.
    events = _events(sample[:1])
    from_program = hc.MultiStepTagger(path)(events.Jet, events.PFCands)
    assert ak.array_equal(from_program, tagger(events.Jet, events.PFCands))


def test_regression_head_gives_tau_momentum(trained: dict, sample: list[Path]) -> None:
    net = MultiStep(len(DEFAULT_CONSTITUENT_FEATURES), len(DEFAULT_JET_FEATURES),
                    regression_outputs=3, seed=2)
    model = InferenceModel(net, trained["scaler"], FeatureSpec())
    events = _events(sample[:1])
    out = hc.MultiStepTagger(model)(events.Jet, events.PFCands)
    assert str(out.tau_momentum.type) == "120 * var * 3 * float32"
    data = _raw_data(sample[:1])
    with torch.no_grad():
        _, _, momentum = model.upstream(data.constituents.values, data.constituent_offsets,
                                        data.jet_features)
    np.testing.assert_allclose(ak.to_numpy(ak.flatten(out.tau_momentum)),
                               100.0 * momentum.numpy(), rtol=1e-6)  # GeV


def test_trainer_checkpoint_loads_with_its_preprocessing(trained: dict, sample: list[Path]) -> None:
    loaded = load_model(trained["checkpoint"])  # Trainer.fit(preprocessing=...) recorded it
    assert loaded.spec == FeatureSpec() and loaded.provenance.producer == "trainer checkpoint"
    model = loaded.inference_model()
    data = _raw_data(sample)
    args = (data.constituents.values, data.constituent_offsets, data.jet_offsets,
            data.jet_features)
    with torch.no_grad():
        for a, b in zip(model(*args), trained["inference"](*args)):
            assert torch.equal(a, b)
    # A model file needs nothing else either, and feeds the tagger (as does the checkpoint).
    path = save_model(trained["folder"] / "bundle.pt", trained["model"], FeatureSpec(),
                      trained["scaler"])
    with torch.no_grad():
        for a, b in zip(load_model(path).inference_model()(*args), trained["inference"](*args)):
            assert torch.equal(a, b)
    assert hc.MultiStepTagger(path).spec == FeatureSpec()
    assert hc.MultiStepTagger(trained["checkpoint"]).spec == FeatureSpec()
    # A checkpoint without its preprocessing (older hepms, or fit without it) says what to do.
    state = torch.load(trained["checkpoint"], weights_only=True)
    state["preprocessing"] = None
    torch.save(state, trained["folder"] / "old_checkpoint.pt")
    with pytest.raises(ValueError, match="without its preprocessing.*retrain"):
        load_model(trained["folder"] / "old_checkpoint.pt")


def test_feature_mismatch_names_the_features(trained: dict) -> None:
    three = FeatureSpec(jet_features=("log_pt", "eta", "phi"))
    with pytest.raises(ValueError, match=r"model takes 4 jet features.*'log_pt', 'eta', 'phi'"):
        InferenceModel(trained["model"], trained["scaler"], three)
    with pytest.raises(ValueError, match=r"network takes 4 jet features"):
        save_model(trained["folder"] / "wrong.pt", trained["model"], three, trained["scaler"])
    with pytest.raises(ValueError, match="btag"):
        FeatureSpec(jet_features=("log_pt", "eta", "phi", "btag"))
    # An export whose metadata asks for a feature hepms cannot compute (e.g. written by another
    # version) is refused by the tagger, naming the feature.
    odd = InferenceModel(trained["model"], trained["scaler"], FeatureSpec())
    meta = odd.metadata
    meta["features"]["jet_features"] = ["log_pt", "eta", "phi", "btagDeepB"]
    odd.metadata_json = json.dumps(meta)
    with pytest.raises(ValueError, match="btagDeepB"):
        hc.MultiStepTagger(odd)


# ----------------------------------------------------------------------------------------------
# The wrapper, eagerly
# ----------------------------------------------------------------------------------------------
def test_eager_scores_equal_the_training_pipeline(
    tagger, trained: dict, sample: list[Path]
) -> None:
    events = _events(sample[:1])
    out = tagger(events.Jet, events.PFCands)
    assert len(out) == len(events)
    assert ak.all(ak.num(out.tau_score) == ak.num(events.Jet))
    assert str(out.type.content) == ("{tau_score: var * float32, tau_logit: var * float32, "
                                     "tau_features: var * 3 * float32, event_score: float32, "
                                     "event_logit: float32}")
    data = _raw_data(sample[:1])  # every jet: the tagger scores every jet
    leading = _raw_data(sample[:1], max_jets=trained["inference"].max_jets)  # the event model's
    with torch.no_grad():
        reference = trained["inference"](data.constituents.values, data.constituent_offsets,
                                         data.jet_offsets, data.jet_features)
        event_reference = trained["inference"](leading.constituents.values, leading.constituent_offsets,
                                               leading.jet_offsets, leading.jet_features)
    if int((data.jet_offsets[1:] - data.jet_offsets[:-1]).max()) <= trained["inference"].max_jets:
        assert np.array_equal(ak.to_numpy(ak.flatten(out.tau_logit)), reference[0].numpy())
        assert np.array_equal(ak.to_numpy(ak.flatten(out.tau_features)), reference[1].numpy())
    else:
        # Jets beyond max_jets are moved behind the events as pseudo-events of their own
        # (hepms.coffea._run_model): the same per-jet inputs at other rows of the batch, which
        # the segment reductions may round differently in the last bit.
        tight = dict(rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(ak.to_numpy(ak.flatten(out.tau_logit)), reference[0].numpy(), **tight)
        np.testing.assert_allclose(ak.to_numpy(ak.flatten(out.tau_features)), reference[1].numpy(),
                                   **tight)
    assert np.array_equal(ak.to_numpy(out.event_logit), event_reference[2].numpy())
    assert np.allclose(ak.to_numpy(ak.flatten(out.tau_score)),
                       torch.sigmoid(reference[0]).numpy())


def test_nested_constituents_and_zero_events(tagger, sample: list[Path]) -> None:
    events = _events(sample[1:])
    flat = tagger(events.Jet, events.PFCands)
    nested_events = read_events(sample[1:], max_jets=None, max_constituents=None)
    jets = nested_events.jets
    nested = tagger(jets, jets.constituents)  # E * var * var * constituents, no jetIdx needed
    for field in flat.fields:
        assert ak.array_equal(flat[field], nested[field]), field
    empty = tagger(events.Jet[:0], events.PFCands[:0])
    assert len(empty) == 0 and empty.type.content == flat.type.content


def test_jets_beyond_max_jets_are_scored_but_not_in_the_event_model(
    trained: dict, sample: list[Path]
) -> None:
    """With max_jets=1, only the leading jet enters the event model; every jet is scored."""
    model = InferenceModel(trained["model"], trained["scaler"], FeatureSpec(max_jets=1))
    tagger = hc.MultiStepTagger(model)
    events = _events(sample[:1])
    # Reverse the jets of every event: the leading jet is now the last one.
    order = ak.local_index(events.Jet.pt)[:, ::-1]
    jets = events.Jet[order]
    out = tagger(jets, ak.with_field(events.PFCands, _reindex(events, order), "jetIdx"))
    assert ak.sum(ak.num(jets) > 1) > 0  # the sample exercises the split
    every = _raw_data(sample[:1])
    leading = _raw_data(sample[:1], max_jets=1)
    with torch.no_grad():
        tau, _, _ = model.upstream(every.constituents.values, every.constituent_offsets,
                                   every.jet_features)
        _, _, event, _ = model(leading.constituents.values, leading.constituent_offsets,
                               leading.jet_offsets, leading.jet_features)
    tau_out = ak.to_numpy(ak.flatten(out.tau_logit[order]))  # back to pT order
    np.testing.assert_allclose(tau_out, tau.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ak.to_numpy(out.event_logit), event.numpy(), rtol=1e-5, atol=1e-6)


def _reindex(events, order):
    """PFCands_jetIdx after the jets of each event were reordered by ``order``."""
    inverse = ak.argsort(order, axis=1)
    flat_inverse = ak.flatten(inverse)
    offsets = np.concatenate([[0], np.cumsum(ak.to_numpy(ak.num(order)))])
    counts = ak.num(events.PFCands)
    event_of = np.repeat(np.arange(len(events)), ak.to_numpy(counts))
    jet_idx = ak.to_numpy(ak.flatten(events.PFCands.jetIdx))
    new = ak.to_numpy(flat_inverse)[offsets[event_of] + jet_idx]
    return ak.unflatten(new.astype(np.int32), counts)


def test_missing_branch_names_it(tagger, sample: list[Path]) -> None:
    events = _events(sample[:1])
    # (plain records: coffea's PFCand behaviour itself refuses a candidate without charge)
    plain = ak.with_name(events.PFCands, None)
    with pytest.raises(ValueError, match=r"'charge' \(branch PFCands_charge\)"):
        tagger(events.Jet, ak.without_field(plain, "charge"))
    with pytest.raises(ValueError, match=r"'mass' \(branch Jet_mass\)"):
        # (plain records: coffea's Jet behaviour itself refuses a jet without mass)
        tagger(ak.without_field(ak.with_name(events.Jet, None), "mass"), events.PFCands)
    with pytest.raises(ValueError, match="jetIdx"):
        tagger(events.Jet, ak.without_field(plain, "jetIdx"))
    lazy = _events(sample[:1], mode="dask")
    with pytest.raises(ValueError, match=r"branch PFCands_charge"):  # at graph-building time
        tagger(lazy.Jet, dak.without_field(dak.with_name(lazy.PFCands, None), "charge"))
    with pytest.raises(TypeError, match="both"):
        tagger(lazy.Jet, events.PFCands)


def test_tagger_pickles_and_tokenizes_by_content(tagger, sample: list[Path]) -> None:
    copy = pickle.loads(pickle.dumps(tagger))
    assert dask.base.tokenize(copy) == dask.base.tokenize(tagger)
    assert len(pickle.dumps(tagger)) < 2_000_000  # model bytes + metadata, no tensors in memory
    hc.clear_model_cache()
    events = _events(sample[:1])
    assert ak.array_equal(copy(events.Jet, events.PFCands), tagger(events.Jet, events.PFCands))
    assert len(hc.loaded_models()) == 1  # both share one deserialised model in this process


# ----------------------------------------------------------------------------------------------
# The wrapper, lazily
# ----------------------------------------------------------------------------------------------
class _CountingSource:
    """A dask-awkward input whose every partition read is counted."""

    reads = 0

    def __init__(self, events):
        self.events = events

    def __call__(self, part: tuple[int, int]):
        type(self).reads += 1
        return self.events[part[0]:part[1]]


def test_dask_graph_builds_without_reading_data(tagger, sample: list[Path]) -> None:
    nano = _events(sample[:1])
    eager = ak.zip({"Jet": nano.Jet[["pt", "eta", "phi", "mass"]],
                    "PFCands": nano.PFCands[["pt", "eta", "phi", "mass", "charge", "jetIdx"]]},
                   depth_limit=1)
    eager = ak.Array(ak.to_packed(eager).layout)  # plain, materialised
    meta = ak.Array(eager.layout.to_typetracer(forget_length=True))
    _CountingSource.reads = 0
    lazy = dak.from_map(_CountingSource(eager), [(0, 50), (50, len(eager))], meta=meta,
                        divisions=(0, 50, len(eager)))
    out = tagger(lazy.Jet, lazy.PFCands)
    assert ak.backend(out._meta) == "typetracer"
    dak.necessary_columns(out)
    assert _CountingSource.reads == 0
    (computed,) = dask.compute(out, scheduler="sync")
    assert _CountingSource.reads == 2
    # meta is exactly what a partition returns (concatenating partitions may change the
    # layout, e.g. a NumpyArray inner dimension into a RegularArray, not the type).
    (first,) = dask.compute(out.partitions[0], scheduler="sync")
    assert first.layout.form == out._meta.layout.form
    assert computed.type.content == out._meta.type.content
    reference = tagger(eager.Jet, eager.PFCands)
    for field in reference.fields:
        np.testing.assert_allclose(ak.to_numpy(ak.flatten(computed[field], axis=None)),
                                   ak.to_numpy(ak.flatten(reference[field], axis=None)),
                                   rtol=1e-5, atol=1e-6)


def test_eager_and_dask_equal_and_columns(tagger, sample: list[Path]) -> None:
    eager_events = _events(sample[:1])
    eager = tagger(eager_events.Jet, eager_events.PFCands)
    lazy_events = _events(sample[:1], mode="dask")
    lazy = tagger(lazy_events.Jet, lazy_events.PFCands)
    (columns,) = dak.necessary_columns(lazy).values()
    assert set(columns) == MODEL_BRANCHES
    (computed,) = dask.compute(lazy, scheduler="sync")
    # One partition = the same batch as the eager call: equal bit for bit.
    for field in eager.fields:
        assert ak.array_equal(computed[field], eager[field]), field
    # Three partitions: the same numbers up to float32 rounding (matrix products over different
    # batch sizes may round differently in the last bit).
    three = _events(sample[:1], mode="dask", steps_per_file=3)
    assert three.npartitions == 3
    (computed3,) = dask.compute(tagger(three.Jet, three.PFCands), scheduler="sync")
    assert ak.array_equal(ak.num(computed3.tau_score), ak.num(eager.tau_score))
    for field in eager.fields:
        np.testing.assert_allclose(ak.to_numpy(ak.flatten(computed3[field], axis=None)),
                                   ak.to_numpy(ak.flatten(eager[field], axis=None)),
                                   rtol=1e-5, atol=1e-6)
    # Attached to the events, lazily and eagerly alike.
    attached = hc.attach_scores(lazy_events, tagger)
    (columns,) = dak.necessary_columns(attached.Jet.tau_score).values()
    assert set(columns) == MODEL_BRANCHES
    (scores,) = dask.compute(attached.Jet.tau_score, scheduler="sync")
    assert ak.array_equal(scores, eager.tau_score)
    assert ak.array_equal(hc.attach_scores(eager_events, tagger).event_score, eager.event_score)


# ----------------------------------------------------------------------------------------------
# The processor on a LocalCluster
# ----------------------------------------------------------------------------------------------
def test_local_cluster_histograms_equal_single_process(
    trained: dict, tagger, sample: list[Path]
) -> None:
    distributed = pytest.importorskip("distributed")
    module = _processor_module()
    threads = torch.get_num_threads()
    tau_scores, event_scores = [], []
    for file in sample:  # virtual NanoEvents read one file at a time
        events = _events([file])
        scores = tagger(events.Jet, events.PFCands)
        tau_scores.append(ak.to_numpy(ak.flatten(scores.tau_score)))
        event_scores.append(ak.to_numpy(scores.event_score[ak.num(events.Jet) > 0]))
    # Thresholds inside the score ranges, so that every histogram and cut sees events.
    tau_cut = float(np.quantile(np.concatenate(tau_scores), 0.2))
    event_cut = float(np.median(np.concatenate(event_scores)))
    proc = module.HTauTauProcessor(
        trained["path"], tau_threshold=tau_cut, event_threshold=event_cut,
        tagger_options={"device": "cpu", "torch_threads": 1},
    )
    # Two partitions per file, four tasks for two workers; the single-process run reads the same
    # entry ranges, so every batch the model sees is the same and the results equal bit for bit.
    single = module.run_eager(sample, proc, steps_per_file=2)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        parallel = module.run_dask(sample, proc, client=client, steps_per_file=2)
        loaded = client.run(hc.loaded_models)
    # Each worker deserialised the model at most once, whatever the number of its tasks.
    assert len(loaded) == 2 and all(len(models) <= 1 for models in loaded.values())
    assert sum(len(models) for models in loaded.values()) >= 1
    assert torch.get_num_threads() == threads  # torch_threads applies to workers, not the client
    (dataset,) = single
    assert set(parallel) == {dataset}
    assert {k: int(v) for k, v in parallel[dataset]["cutflow"].items()} == {
        k: int(v) for k, v in single[dataset]["cutflow"].items()
    }
    cutflow = single[dataset]["cutflow"]
    assert int(cutflow["all"]) == 240 and int(cutflow["selected"]) > 0
    for name, h in single[dataset]["hists"].items():
        assert h.sum() > 0, name
        assert parallel[dataset]["hists"][name] == h, name
