"""Exports: ONNX (hepms.export.export_onnx): onnxruntime outputs equal the torch model's on real
generated events (with empty jets and jet-less events), invalid offsets (or jet_features rows
that are not one per jet) give NaN and inputs_valid = False, and the file runs without hepms; the entry points of the torch model, its
TorchScript and torch.export files raise for invalid offsets; `hepms export` of a model file."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("pythia8mc")
pytest.importorskip("fastjet")

from hepms.data import Standardizer, build_dataset  # noqa: E402
from hepms.export import (  # noqa: E402
    ONNX_INPUTS,
    ONNX_OUTPUTS,
    InferenceModel,
    export_onnx,
    model_metadata,
)
from hepms.features import DEFAULT_CONSTITUENT_FEATURES, FeatureSpec  # noqa: E402
from hepms.generate.io import read_events  # noqa: E402
from hepms.nn import MultiStep  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

# float32, different summation order (onnxruntime's scatter vs our kernels' cascade sums)
ATOL, RTOL = 2e-5, 1e-5
# every jet of every event, jet-less events included
SPEC = FeatureSpec(max_jets=64, min_jets=0)


@pytest.fixture(scope="module")
def data(tiny_sample: Path):
    """Raw features of every event of the shared tiny sample, jet-less events included."""
    events = read_events(sorted(tiny_sample.glob("*.root")), max_jets=None, max_constituents=None)
    return build_dataset(events, SPEC)


def _model(data, **options) -> InferenceModel:
    net = MultiStep(data.constituents.num_features, data.jet_features.shape[1], seed=3, **options)
    return InferenceModel(net, Standardizer.fit(data), SPEC)


def _inputs(part) -> tuple[torch.Tensor, ...]:
    return (part.constituents.values, part.constituent_offsets, part.jet_offsets,
            part.jet_features)


def _with_empty_jets(args) -> tuple[torch.Tensor, ...]:
    """The same events with the constituents of every third jet removed (empty jets)."""
    x, co, jo, jf = args
    counts = co.diff()
    counts[::3] = 0
    keep = torch.repeat_interleave(counts > 0, co.diff())
    new_co = torch.cat([co.new_zeros(1), counts.cumsum(0)])
    assert int((new_co.diff() == 0).sum()) >= len(counts) // 3
    return x[keep], new_co, jo, jf


def _run(session, args) -> list[np.ndarray]:
    return session.run(None, {name: a.numpy() for name, a in zip(ONNX_INPUTS, args)})


def _diffs(onnx_out, torch_out) -> str:
    """Largest absolute difference per output, for the log."""
    return ", ".join(f"{name} {float(np.abs(a - b.detach().numpy()).max()) if a.size else 0.0:.3g}"
                     for name, a, b in zip(ONNX_OUTPUTS, onnx_out, torch_out))


@pytest.fixture(scope="module")
def exported(data, tmp_path_factory):
    """One model that uses every translated op, exported once (an export takes seconds): the
    additional NN (k = 3), the momentum regression, sum + attention (segment_softmax) + max
    pooling in the tau model and mean + max in the event model; segment_gather in the blocks."""
    model = _model(data, connection="additional", k=3, regression_outputs=3,
                   tau_options={"pool": ["sum", "attention", "max"]},
                   event_options={"pool": ["mean", "max"]})
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path, ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_onnxruntime_equals_torch_on_generated_events(data, exported) -> None:
    model, path, session = exported
    assert [i.name for i in session.get_inputs()] == list(ONNX_INPUTS)
    assert [o.name for o in session.get_outputs()] == list(ONNX_OUTPUTS)
    counts = data.jet_offsets.diff()
    assert int((counts == 0).sum()) > 0, "the sample should hold events without jets"
    zero_jet_event = int(torch.nonzero(counts == 0)[0, 0])
    cases = {
        "every event": _inputs(data),
        "one event": _inputs(data[:1]),
        "a jet-less event alone (B = 0, N = 0)": _inputs(data[zero_jet_event:zero_jet_event + 1]),
        "events 5-16": _inputs(data[5:17]),
        # reconstructed jets always have constituents: empty ones made by hand
        "every event, every third jet empty": _with_empty_jets(_inputs(data)),
    }
    report = []
    with torch.no_grad():
        for what, args in cases.items():
            out = _run(session, args)
            expected = model(*args)
            assert out[-1].dtype == np.bool_ and out[-1].shape == () and bool(out[-1])
            for name, a, b in zip(ONNX_OUTPUTS, out, expected):
                assert a.shape == tuple(b.shape), f"{what}: {name}"
                np.testing.assert_allclose(a, b.numpy(), rtol=RTOL, atol=ATOL,
                                           err_msg=f"{what}: {name}")
            report.append(f"  {what}: {_diffs(out, expected)}")
    # the numbers the README quotes (pytest -s shows them)
    print(f"\nmax |onnxruntime - torch| ({len(data)} events):\n" + "\n".join(report))


def test_invalid_offsets_give_nan_and_inputs_valid_false(data, exported) -> None:
    model, _, session = exported
    bad = _bad_inputs(data)
    for what, args in bad.items():
        with pytest.raises(ValueError, match="offsets"):  # torch raises ...
            model(*args)
        out = _run(session, args)  # ... ONNX cannot: NaN and a flag, never an error
        assert not bool(out[-1]), what
        for name, array in zip(ONNX_OUTPUTS[:-1], out[:-1]):
            assert np.isnan(array).all(), f"{what}: {name}"


def test_jet_feature_rows_not_one_per_jet_give_nan_and_inputs_valid_false(data, exported) -> None:
    """jet_features with fewer or more rows than the jets of constituent_offsets: the torch model
    raises naming both counts; the ONNX file runs (no runtime shape error) and flags it."""
    model, _, session = exported
    x, co, jo, jf = _inputs(data[:6])
    jets = len(co) - 1
    assert jets >= 3
    extra = torch.cat([jf, jf[:2]])
    cases = {
        "one row short": (jf[:-1], torch.cat([jo[:-1], jo[-1:] - 1])),
        "two rows more": (extra, torch.cat([jo[:-1], jo[-1:] + 2])),
        "no rows": (jf[:0], torch.zeros_like(jo)),
        "right rows, jet offsets of other rows": (jf, torch.cat([jo[:-1], jo[-1:] + 2])),
    }
    for what, (features, offsets) in cases.items():
        args = (x, co, offsets, features)
        message = (f"jet_features has {len(features)} rows but constituent_offsets describes "
                   f"{jets} jets" if len(features) != jets else "jet_offsets")
        with pytest.raises(ValueError, match=message):
            model(*args)
        out = _run(session, args)
        assert not bool(out[-1]), what
        for name, array in zip(ONNX_OUTPUTS[:-1], out[:-1]):
            assert np.isnan(array).all(), f"{what}: {name}"
        assert out[2].shape == (len(offsets) - 1,) and out[0].shape == (jets,), what


def _bad_inputs(data) -> dict[str, tuple[torch.Tensor, ...]]:
    x, co, jo, jf = _inputs(data[:6])
    assert int(jo[-1]) >= 3
    return {
        "decreasing constituent offsets": (x, co.flip(0), jo, jf),
        "constituent offsets past N": (x, torch.cat([co[:-1], co[-1:] + 5]), jo, jf),
        "constituent offsets not starting at 0": (x, co + 1, jo, jf),
        "decreasing jet offsets": (x, co, torch.cat([jo[:1], jo[2:3], jo[1:2], jo[3:]]), jf),
        "jet offsets ending before B": (x, co, jo.clamp(max=int(jo[-1]) - 1), jf),
        "negative offsets": (x, co - 1000, jo, jf),
    }


@pytest.fixture(scope="module")
def program(exported, tmp_path_factory):
    """The torch.export (.pt2) file of the ``exported`` model, loaded by hepms.export.load_export."""
    from hepms.export import export_program, load_export

    return load_export(export_program(exported[0], tmp_path_factory.mktemp("pt2") / "m.pt2"))


def test_torch_exports_raise_for_invalid_offsets(data, exported, program, tmp_path: Path) -> None:
    """TorchScript and torch.export files check their offsets (whatever the validation switch
    says: the entry points always check) instead of returning finite garbage."""
    import hepms
    from hepms.export import export_torchscript, load_export

    model = exported[0]
    loaded = {"torchscript": load_export(export_torchscript(model, tmp_path / "m.pt")),
              "export": program}
    with torch.no_grad(), hepms.validation(False):
        good = _inputs(data[:6])
        for kind, module in loaded.items():
            for a, b in zip(module(*good), model(*good)):
                assert torch.equal(a, b), kind
        for what, args in _bad_inputs(data).items():
            with pytest.raises(ValueError, match="offsets"):
                model(*args)
            for kind, module in loaded.items():
                # TorchScript wraps the ValueError in its interpreter's RuntimeError
                with pytest.raises((ValueError, RuntimeError), match=r"offsets"):
                    module(*args)
        # one row per jet
        x, co, jo, jf = good
        with pytest.raises(ValueError, match="jet_features has 2 rows but constituent_offsets "
                                             "describes"):
            model(x, co, jo, jf[:2])
        with pytest.raises(torch.jit.Error, match="jet_features has 2 rows"):
            loaded["torchscript"](x, co, jo, jf[:2])


def test_pt2_program_names_the_input_that_does_not_fit(data, exported, program) -> None:
    """The loaded .pt2 program checks its inputs before it runs: rows, widths and dtypes that do
    not fit raise ValueError / TypeError naming the input and its shape (the program's own shape
    guards raise a bare AssertionError about symbolic sizes), as the eager model does; int32
    offsets and keyword arguments work as in the other model kinds."""
    from hepms.export import model_metadata

    model = exported[0]
    x, co, jo, jf = _inputs(data[:6])
    jets, rows = len(co) - 1, len(x)
    with torch.no_grad():
        expected = model(x, co, jo, jf)
        for same in (program(x, co.int(), jo.int(), jf),
                     program(jet_features=jf, jet_offsets=jo, constituent_offsets=co,
                             constituents=x)):
            for a, b in zip(same, expected):
                assert torch.equal(a, b)
        # jet_features rows that are not one per jet: the eager model's message
        for features in (jf[:-1], torch.cat([jf, jf[:2]])):
            message = f"jet_features has {len(features)} rows but constituent_offsets describes {jets} jets"
            with pytest.raises(ValueError, match=message):
                model(x, co, jo, features)
            with pytest.raises(ValueError, match=message):
                program(x, co, jo, features)
        # constituent rows that are not the last constituent offset
        with pytest.raises(ValueError, match=rf"constituent_offsets: offsets\[-1\] must equal the "
                                             rf"number of rows of values \({rows + 1}\), got {rows}"):
            program(torch.cat([x, x[:1]]), co, jo, jf)
        # widths and dimensions
        f_c, f_j = x.shape[1], jf.shape[1]
        with pytest.raises(ValueError, match=rf"constituents must be \[rows, {f_c}\].*got shape "
                                             rf"\({rows}, {f_c - 1}\)"):
            program(x[:, 1:], co, jo, jf)
        with pytest.raises(ValueError, match=rf"jet_features must be \[rows, {f_j}\].*got shape "
                                             rf"\({jets}, {f_j + 1}\)"):
            program(x, co, jo, torch.cat([jf, jf[:, :1]], dim=1))
        with pytest.raises(ValueError, match=rf"constituents must be .*got shape \({rows},\)"):
            program(x[:, 0], co, jo, jf)
        with pytest.raises(ValueError, match=r"jet_offsets must be 1-D .*got shape \(1, "):
            program(x, co, jo[None], jf)
        # dtypes
        with pytest.raises(TypeError, match=r"jet_features must be float32 .*got torch.float64"):
            program(x, co, jo, jf.double())
        with pytest.raises(TypeError, match=r"constituent_offsets must be integer .*torch.float32"):
            program(x, co.float(), jo, jf)
        with pytest.raises(TypeError, match=r"jet_offsets must be a torch.Tensor, got list"):
            program(x, co, jo.tolist(), jf)
    assert program.eval() is program and not program.training
    assert model_metadata(program) == model.metadata


def test_export_bytes_load_as_the_file_does(data, exported, tmp_path: Path) -> None:
    """Exports shipped as bytes (to dask workers, hepms.coffea) load with the file's metadata
    and input checks: a .pt2 program's row mismatch names the input (not the program's
    AssertionError); bytes that are not a hepms export raise ValueError."""
    from hepms.export import (export_program, export_torchscript, file_kind, load_export_bytes,
                              model_metadata)

    model = exported[0]
    x, co, jo, jf = _inputs(data[:6])
    jets = len(co) - 1
    with torch.no_grad():
        expected = model(x, co, jo, jf)
        for path in (export_torchscript(model, tmp_path / "m.pt"),
                     export_program(model, tmp_path / "m.pt2")):
            loaded = load_export_bytes(path.read_bytes(), file_kind(path))
            assert model_metadata(loaded) == model.metadata, path.name
            assert not loaded.training, path.name
            for a, b in zip(loaded(x, co, jo, jf), expected):
                assert torch.equal(a, b), path.name
        with pytest.raises(ValueError, match=f"jet_features has {jets - 1} rows but "
                                             f"constituent_offsets describes {jets} jets"):
            loaded(x, co, jo, jf[:-1])  # the .pt2 program
        with pytest.raises(ValueError, match="kind must be"):
            load_export_bytes(path.read_bytes(), "checkpoint")
        plain = tmp_path / "plain.pt"
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(plain))
        with pytest.raises(ValueError, match="the export bytes has no .* metadata"):
            load_export_bytes(plain.read_bytes(), "torchscript")


def test_metadata_props_and_runs_without_hepms(exported, data, tmp_path: Path) -> None:
    model, path, _ = exported
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    meta = json.loads(props["hepms.json"])
    session_meta = exported[2].get_modelmeta().custom_metadata_map  # what the README shows
    assert json.loads(session_meta["hepms.json"]) == meta
    assert meta == model_metadata(path)
    assert meta["features"]["constituent_features"] == list(DEFAULT_CONSTITUENT_FEATURES)
    assert FeatureSpec.from_dict(meta["features"]) == SPEC
    assert meta["k"] == 3 and meta["onnx"]["opset"] == 18
    domains = {node.domain for node in proto.graph.node}
    assert domains <= {"", "ai.onnx"}, f"non-standard operators: {domains}"
    # A fresh interpreter that cannot import hepms or torch runs the file.
    args = [a.numpy() for a in _inputs(data[:20])]
    np.savez(tmp_path / "inputs.npz", **dict(zip(ONNX_INPUTS, args)))
    script = (
        "import sys; sys.modules['hepms'] = None; sys.modules['torch'] = None\n"
        "import numpy as np, onnxruntime as ort\n"
        f"s = ort.InferenceSession({str(path)!r}, providers=['CPUExecutionProvider'])\n"
        f"inputs = dict(np.load({str(tmp_path / 'inputs.npz')!r}))\n"
        f"np.save({str(tmp_path / 'event.npy')!r}, s.run(['event_logit'], inputs)[0])\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    with torch.no_grad():
        expected = model(*_inputs(data[:20]))[2].numpy()
    np.testing.assert_allclose(np.load(tmp_path / "event.npy"), expected, rtol=RTOL, atol=ATOL)


def test_hepms_export_every_format(tiny_sample: Path, tmp_path: Path, capsys) -> None:
    """`hepms export RUN --format onnx|torchscript|export` on a model file (written here with
    hepms.model_file.save_model; tests/test_model_file.py exports what `hepms train` wrote): the
    exported files give the model file's scores (onnxruntime: to float32 rounding; torch formats:
    bit for bit) and carry its feature spec and provenance."""
    from hepms.cli import main
    from hepms.export import load_export
    from hepms.model_file import load_model, save_model

    spec = FeatureSpec()  # the training defaults: leading 8 jets, events with jets
    events = read_events(sorted(tiny_sample.glob("*.root")), max_jets=None, max_constituents=None)
    data = build_dataset(events, spec)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    net = MultiStep(data.constituents.num_features, data.jet_features.shape[1],
                    connection="additional", k=2, seed=5)
    save_model(run_dir / "model.pt", net, spec, Standardizer.fit(data), producer="test_export")

    trained = load_model(run_dir)
    reference = trained.inference_model()
    args = _inputs(data)
    with torch.no_grad():
        expected = reference(*args)

    assert main(["export", str(run_dir), "--format", "onnx"]) == 0
    onnx_path = run_dir / "model.onnx"
    assert f"wrote {onnx_path}" in capsys.readouterr().out
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    out = _run(session, args)
    assert bool(out[-1])
    for name, a, b in zip(ONNX_OUTPUTS, out, expected):
        np.testing.assert_allclose(a, b.numpy(), rtol=RTOL, atol=ATOL, err_msg=name)
    report = (f"model file: max |onnxruntime - torch| on {len(args[2]) - 1} events: "
              + _diffs(out, expected))
    meta = model_metadata(onnx_path)
    assert FeatureSpec.from_dict(meta["features"]) == trained.spec
    assert meta["extra"]["provenance"] == trained.provenance.to_dict()

    for fmt, name in (("torchscript", "model.torchscript.pt"), ("export", "exported.pt2")):
        target = tmp_path / name
        options = ["-o", str(target)] if fmt == "export" else []
        assert main(["export", str(run_dir / "model.pt"), "--format", fmt, *options]) == 0
        target = target if fmt == "export" else run_dir / name
        loaded = load_export(target)
        assert model_metadata(loaded)["features"] == meta["features"]
        with torch.no_grad():
            for a, b in zip(loaded(*args), expected):
                assert torch.equal(a, b), fmt

    # Errors name the problem and exit with status 1.
    assert main(["export", str(tmp_path / "missing"), "--format", "onnx"]) == 1
    assert "no model file" in capsys.readouterr().err
    assert main(["export", str(run_dir), "--format", "onnx", "-o", str(run_dir / "model.pt")]) == 1
    assert "model file itself" in capsys.readouterr().err
    with capsys.disabled():
        print(report)
