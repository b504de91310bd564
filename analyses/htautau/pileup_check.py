"""Does a trained model score an independent sample as well as its own test split?

If the test split shared pileup events with the training split, a network could memorise them and
its test AUC would be optimistic; a sample generated with another seed (so other signal events and
an independent pileup pool) would then score lower.  This script scores one trained model
(``hepms train`` run directory) on

(a) the test split of its own sample (the split stored by the generator; its pileup pool is
    disjoint from the training pool), and
(b) every event of an independent sample (``hepms generate`` with another seed),

and, for reference, on its validation split (never trained on, but used to choose the epoch), and
reports the tau-ID and H/Z AUCs with bootstrap errors (events resampled with replacement, jets
following their events) and the difference (a) - (b) with its error.

    python analyses/htautau/pileup_check.py RUN_DIR INDEPENDENT_SAMPLE [--bootstrap 300]

The result is printed and written to ``RUN_DIR/pileup_check.json`` (atomically), with the machine
and the software versions.
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

from hepms import metrics
from hepms.config import load_config
from hepms.data import Standardizer
from hepms._machine import cpu_model
from hepms.study.dataset import PreparedData, dataset_of_sample, prepare_data, sample_fingerprint
from hepms.study.runner import predict, versions, write_json
from hepms.model_file import load_model

log = logging.getLogger("pileup_check")


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


def independent_data(cfg: Mapping[str, Any], path: Path, scaler: Standardizer) -> PreparedData:
    """Every event of ``path`` built like the study's data and standardised with the model's scaler."""
    scaled = scaler(dataset_of_sample(cfg, path))
    return PreparedData(scaled, scaled, scaled, scaler, None, sample_fingerprint(path), {"path": str(path)})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="run directory of `hepms train` (config.yaml, model.pt)")
    parser.add_argument("independent", type=Path, help="sample generated with another seed")
    parser.add_argument("--bootstrap", type=int, default=300, help="bootstrap replicas (default 300)")
    parser.add_argument("--seed", type=int, default=1, help="bootstrap seed")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    started = time.perf_counter()

    cfg = load_config(args.run_dir / "config.yaml", [])
    cfg["progress"] = False
    trained = load_model(args.run_dir)
    model = trained.network
    data = prepare_data(cfg, None, progress=False)
    if trained.provenance.data_fingerprint != data.fingerprint:
        print(f"error: the model in {args.run_dir} was trained on another sample or other settings",
              file=sys.stderr)
        return 2
    if data.info.get("split") != "generator":
        print("warning: the sample has no generator split; its test split may share pileup with "
              "training", file=sys.stderr)
    own_manifest = json.loads((Path(cfg["data"]["path"]) / "manifest.json").read_text())
    other_manifest = json.loads((args.independent / "manifest.json").read_text())
    if own_manifest["settings"]["seed"] == other_manifest["settings"]["seed"]:
        print("error: the independent sample has the same seed as the training sample", file=sys.stderr)
        return 2
    scaler = trained.scaler
    batch = cfg["trainer"]["eval_batch_size"]
    with torch.no_grad():
        pred_test = predict(model, data, batch)
        pred_other = predict(model, independent_data(cfg, args.independent, scaler), batch)
        validation = PreparedData(data.val, data.val, data.val, data.scaler, None, data.fingerprint, {})
        pred_val = predict(model, validation, batch)
    a = bootstrap_aucs(pred_test, args.bootstrap, args.seed)
    b = bootstrap_aucs(pred_other, args.bootstrap, args.seed + 1)
    v = bootstrap_aucs(pred_val, args.bootstrap, args.seed + 2)
    result: dict[str, Any] = {"test_split": a, "independent": b, "validation_split": v}
    for key in ("auc_tau", "auc_event"):
        diff = a[key] - b[key]
        err = float(np.hypot(a[f"{key}_err"], b[f"{key}_err"]))
        result[f"{key}_difference"] = {"value": diff, "error": err, "pulls": diff / err if err > 0 else None}
    result.update({
        "run_dir": str(args.run_dir),
        "sample": {"path": cfg["data"]["path"], "seed": own_manifest["settings"]["seed"],
                   "events_per_process": own_manifest["settings"]["events_per_process"]},
        "independent_sample": {"path": str(args.independent), "seed": other_manifest["settings"]["seed"],
                               "events_per_process": other_manifest["settings"]["events_per_process"]},
        "bootstrap": args.bootstrap,
        "machine": {"cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "python": platform.python_version()},
        "versions": versions(),
        "seconds": round(time.perf_counter() - started, 1),
    })
    write_json(args.run_dir / "pileup_check.json", result)
    print(f"machine: {result['machine']['cpu']}, torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    print(f"{'':24} {'test split':>18} {'independent':>18} {'test - independent':>20} {'validation split':>18}")
    for key, name in (("auc_tau", "tau-ID AUC"), ("auc_event", "H/Z AUC")):
        d = result[f"{key}_difference"]
        print(f"{name:24} {a[key]:.4f} ± {a[key + '_err']:.4f}   {b[key]:.4f} ± {b[key + '_err']:.4f}   "
              f"{d['value']:+.4f} ± {d['error']:.4f}   {v[key]:.4f} ± {v[key + '_err']:.4f}")
    print(f"test split: {a['events']} events, {a['jets']} jets; independent: {b['events']} events, "
          f"{b['jets']} jets; wrote {args.run_dir / 'pileup_check.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
