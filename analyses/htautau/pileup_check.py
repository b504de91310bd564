"""Does a trained model score an independent sample as well as its own test split?

If the test split shared pileup events with the training split, a network could memorise them and
its test AUC would be optimistic; a sample generated with another seed (so other signal events and
independent pileup pools) would then score lower.  This script scores one trained model (anything
:func:`hepms.model_file.load_model` reads: a ``hepms train`` run directory, a ``hepms scan`` trial
directory, a model file) on

(a) the test split of its own sample (the split stored by the generator; its pileup pool is
    disjoint from the training pool),
(b) every event of an independent sample (``hepms generate`` with another seed), and
(c) each of the independent sample's train / validation / test splits on its own (each split has
    its own pileup pool, none ever seen in training: how much the AUCs move from pool to pool),

and, for reference, on its own validation split (never trained on, but used to choose the epoch).
It reports the tau-ID and H/Z AUCs with bootstrap errors (events resampled with replacement, jets
following their events), the difference (a) - (b) and the pairwise differences of (c).

    python analyses/htautau/pileup_check.py MODEL INDEPENDENT_SAMPLE [--data OWN_SAMPLE]
        [--out FILE.json] [--cache DIR] [--bootstrap 300]

The model's data settings come from ``config.yaml`` next to it (``hepms train``), else from the
model file's feature spec with the default data settings; ``--data`` names its own sample when the
configuration's ``data.path`` is relative to another folder. The data fingerprint recorded in the
model file must match, so a wrong sample or wrong settings are refused. The result is printed and
written to ``--out`` (default ``pileup_check.json`` next to the model; atomically), with the
machine, the CPU time and the software versions.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import uproot

from hepms import metrics
from hepms.config import load_config, validate
from hepms.config_engine import ConfigError
from hepms.data import Standardizer, TauEventData, split
from hepms._machine import cpu_model
from hepms.study.dataset import MANIFEST, PreparedData, dataset_of_sample, prepare_data
from hepms.study.runner import predict, versions, write_json
from hepms.model_file import TrainedModel, load_model

log = logging.getLogger("pileup_check")

SPLITS = ("train", "validation", "test")


def bootstrap_aucs(pred: Mapping[str, np.ndarray], n_boot: int, seed: int) -> dict[str, Any]:
    """AUCs of the predictions and their bootstrap standard deviations (resampling events)."""
    offsets = pred["jet_offsets"].astype(np.int64)
    n_events = len(offsets) - 1
    jets_per_event = np.diff(offsets)
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {
        "events": int(n_events),
        "jets": int(offsets[-1]),
        "auc_tau": metrics.roc_auc(pred["jet_labels"], pred["tau_logit"]),
        "auc_event": metrics.roc_auc(pred["event_labels"], pred["event_logit"]),
        # of the scored events (at least one jet, at most data.max_jets): multiplicity separates H from Z
        "jets_per_event": {name: float(jets_per_event[pred["event_labels"] == label].mean())
                           for name, label in (("H", 1), ("Z", 0))},
    }
    samples: dict[str, list[float]] = {"auc_tau": [], "auc_event": []}
    for _ in range(n_boot):
        events = rng.integers(0, n_events, n_events)
        counts = jets_per_event[events]
        # jets of the drawn events, in draw order
        jets = np.repeat(offsets[events] - np.cumsum(counts) + counts, counts) + np.arange(int(counts.sum()))
        samples["auc_tau"].append(metrics.roc_auc(pred["jet_labels"][jets], pred["tau_logit"][jets]))
        samples["auc_event"].append(metrics.roc_auc(pred["event_labels"][events], pred["event_logit"][events]))
    for key, values in samples.items():
        out[f"{key}_err"] = float(np.std(values, ddof=1))
    return out


def difference(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """``a - b`` of both AUCs, with the bootstrap errors added in quadrature (independent events)."""
    out: dict[str, Any] = {}
    for key in ("auc_tau", "auc_event"):
        diff = a[key] - b[key]
        err = float(np.hypot(a[f"{key}_err"], b[f"{key}_err"]))
        out[key] = {"value": diff, "error": err, "pulls": diff / err if err > 0 else None}
    return out


def rho_by_split(path: Path) -> dict[str, float] | None:
    """Mean rho (GeV per unit area) of all generated events of each split of the sample at ``path``:
    each split overlays its own finite pileup pool, whose fluctuation all its events share. None
    for a sample without a stored split."""
    files = json.loads((path / MANIFEST).read_text())["files"]
    rho, which = [], []
    for entry in files:
        with uproot.open(path / entry["path"]) as root_file:
            tree = root_file[entry["tree"]]
            if "split" not in tree or "rho" not in tree:
                log.warning("%s has no split or rho branch: no mean rho per split", path / entry["path"])
                return None
            arrays = tree.arrays(["rho", "split"], library="np")
        rho.append(arrays["rho"])
        which.append(arrays["split"])
    rho_all, split_all = np.concatenate(rho), np.concatenate(which)
    return {name: float(rho_all[split_all == k].mean()) for k, name in enumerate(SPLITS)}


def agreement(parts: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Do the AUCs of three independent parts agree within their errors? The weighted mean, the
    chi2 about it (2 degrees of freedom) and its p-value, ``exp(-chi2 / 2)`` for 2 degrees."""
    if len(parts) != 3:
        raise ValueError(f"agreement takes three parts (the p-value formula is that of 2 degrees of freedom), "
                         f"got {len(parts)}")
    out: dict[str, Any] = {}
    for key in ("auc_tau", "auc_event"):
        x = np.array([part[key] for part in parts])
        w = 1.0 / np.array([part[f"{key}_err"] for part in parts]) ** 2
        mean = float(np.sum(w * x) / np.sum(w))
        chi2 = float(np.sum(w * (x - mean) ** 2))
        out[key] = {"mean": mean, "chi2": chi2, "ndof": 2, "p_value": float(np.exp(-chi2 / 2))}
    return out


def as_test(part: TauEventData, scaler: Standardizer, fingerprint: str) -> PreparedData:
    """``part`` (standardised already) as the test part that :func:`predict` scores."""
    return PreparedData(part, part, part, scaler, None, fingerprint, {})


def model_config(source: Path, trained: TrainedModel, data_path: Path | None) -> dict[str, Any]:
    """The configuration the model was trained with: its folder's ``config.yaml`` (``hepms train``),
    else the defaults with the feature settings of the model file (a scan trial folder, a bare
    model file); ``data.path`` replaced by ``data_path`` when given. Never generates a sample."""
    folder = source if source.is_dir() else source.parent
    if (folder / "config.yaml").is_file():
        cfg = load_config(folder / "config.yaml")
    else:
        spec = trained.spec.to_dict()
        keys = ("jet_features", "constituent_features", "max_jets", "max_constituents", "min_jets")
        cfg = validate({"data": {key: spec[key] for key in keys}})
    cfg["progress"] = False
    cfg["data"]["generate"]["enabled"] = False
    if data_path is not None:
        cfg["data"]["path"] = str(data_path)
    path = Path(cfg["data"]["path"])
    if not (path / MANIFEST).is_file():
        raise ConfigError(f"the model's sample {str(path)!r} (data.path, relative to {Path.cwd()}) has no "
                          f"{MANIFEST}: give the sample the model was trained on with --data PATH")
    return cfg


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="what hepms.model_file.load_model reads: a `hepms train` run "
                        "directory, a `hepms scan` trial directory or a model file")
    parser.add_argument("independent", type=Path, help="sample generated with another seed")
    parser.add_argument("--data", type=Path, default=None,
                        help="the model's own sample (default: data.path of the run's config.yaml)")
    parser.add_argument("--out", type=Path, default=None,
                        help="output JSON (default: pileup_check.json next to the model)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder of the built-dataset cache of the model's sample (default: no cache)")
    parser.add_argument("--bootstrap", type=int, default=300, help="bootstrap replicas (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="bootstrap seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started, cpu_started = time.perf_counter(), time.process_time()
    out = args.out or (args.model if args.model.is_dir() else args.model.parent) / "pileup_check.json"

    try:
        trained = load_model(args.model)
        cfg = model_config(args.model, trained, args.data)
        data = prepare_data(cfg, args.cache, progress=False)
        other_manifest = json.loads((args.independent / MANIFEST).read_text())
    except (OSError, ValueError, ConfigError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if trained.provenance.data_fingerprint != data.fingerprint:
        print(f"error: the model {args.model} was trained on data with fingerprint "
              f"{trained.provenance.data_fingerprint}, {data.info['path']} with these settings gives "
              f"{data.fingerprint}: another sample or other data settings (max_events, split_seed, ...)",
              file=sys.stderr)
        return 2
    if data.info.get("split") != "generator":
        print("warning: the sample has no generator split; its test split may share pileup with "
              "training", file=sys.stderr)
    own_manifest = json.loads((Path(data.info["path"]) / MANIFEST).read_text())
    own_settings, other_settings = own_manifest["settings"], other_manifest["settings"]
    if own_settings["seed"] == other_settings["seed"]:
        print("error: the independent sample has the same seed as the training sample", file=sys.stderr)
        return 2
    differ = sorted(k for k in set(own_settings) | set(other_settings) if own_settings.get(k) != other_settings.get(k))
    scaler = trained.scaler
    batch = cfg["trainer"]["eval_batch_size"]
    other = scaler(dataset_of_sample(cfg, args.independent))  # the parts of `data` are standardised already
    if other.event_split is None:
        print(f"error: {args.independent} stores no train/validation/test split (made by an older hepms "
              "generate?)", file=sys.stderr)
        return 2
    parts = {"test_split": data.test, "validation_split": data.val, "independent": other}
    parts.update(zip([f"independent_{name}" for name in SPLITS], split(other, cfg["data"]["fractions"], cfg["data"]["split_seed"])))
    with torch.no_grad():
        aucs = {name: bootstrap_aucs(predict(trained.network, as_test(part, scaler, data.fingerprint), batch),
                                     args.bootstrap, args.seed + i)
                for i, (name, part) in enumerate(parts.items())}
    a, b, v = aucs["test_split"], aucs["independent"], aucs["validation_split"]
    result: dict[str, Any] = {"test_split": a, "independent": b, "validation_split": v}
    for key, diff in difference(a, b).items():
        result[f"{key}_difference"] = diff
    result["independent_splits"] = {name: aucs[f"independent_{name}"] for name in SPLITS}
    result["independent_split_differences"] = {
        f"{x} - {y}": difference(aucs[f"independent_{x}"], aucs[f"independent_{y}"])
        for x, y in (("train", "validation"), ("train", "test"), ("validation", "test"))}
    result["independent_splits_agreement"] = agreement(list(result["independent_splits"].values()))
    result.update({
        "model": {"source": str(args.model), **trained.provenance.to_dict()},
        "sample": {"path": data.info["path"], "seed": own_settings["seed"],
                   "events_per_process": own_settings["events_per_process"], "fingerprint": data.fingerprint,
                   "mean_rho_by_split": rho_by_split(Path(data.info["path"]))},
        "independent_sample": {"path": str(args.independent), "seed": other_settings["seed"],
                               "events_per_process": other_settings["events_per_process"],
                               "settings_differing": differ, "mean_rho_by_split": rho_by_split(args.independent)},
        "bootstrap": args.bootstrap,
        "machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "versions": versions(),
        "seconds": round(time.perf_counter() - started, 1),
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
    })
    write_json(out, result)
    print(f"machine: {result['machine']['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"independent sample: settings differing from the model's sample: {', '.join(differ)}")
    print(f"{'':28} {'events':>7} {'tau-ID AUC':>17} {'H/Z AUC':>17}  jets per H / Z event")
    for name, r in aucs.items():
        print(f"{name:28} {r['events']:7d} {r['auc_tau']:.4f} ± {r['auc_tau_err']:.4f}  "
              f"{r['auc_event']:.4f} ± {r['auc_event_err']:.4f}  "
              f"{r['jets_per_event']['H']:.3f} / {r['jets_per_event']['Z']:.3f}")
    for name, d in [("test - independent", difference(a, b)),
                    *((f"independent {k}", d) for k, d in result["independent_split_differences"].items())]:
        print(f"{name:28} {'':7} {d['auc_tau']['value']:+.4f} ± {d['auc_tau']['error']:.4f}  "
              f"{d['auc_event']['value']:+.4f} ± {d['auc_event']['error']:.4f}")
    for key, name in (("auc_tau", "tau-ID AUC"), ("auc_event", "H/Z AUC")):
        g = result["independent_splits_agreement"][key]
        print(f"independent splits, {name}: chi2 = {g['chi2']:.2f} for 2 degrees of freedom, p = {g['p_value']:.2f}")
    for what in ("sample", "independent_sample"):
        rho = result[what]["mean_rho_by_split"]
        if rho is not None:
            print(f"mean rho of the {what.replace('_', ' ')}'s train / validation / test split: "
                  + " / ".join(f"{rho[name]:.2f}" for name in SPLITS) + " GeV")
    print(f"wrote {out} ({result['cpu_seconds']} s CPU)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
