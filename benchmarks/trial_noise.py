"""Do two hepms versions give the same trial results? Short trials of one study configuration.

Trains one configuration of the htautau study (default: loss balancing, (w1, w2) = (1, 1), BCE) on
a random subset of the sample, with early stopping as in the study, for one seed, and prints one
JSON line: the per-epoch history and the test metrics. Run it for several seeds with two versions
(``--source DIR`` imports hepms from another tree, as in ``trial_profile.py``) and compare the
differences between versions with the spread between seeds (``--before ... --after ...``).

    python benchmarks/trial_noise.py --data data/full --seed 1000 > after_1000.json
    python benchmarks/trial_noise.py --source /tmp/old --data data/full --seed 1000 > before_1000.json
    python benchmarks/trial_noise.py --before before_*.json --after after_*.json
    python benchmarks/trial_noise.py --data data/full --seed 1000 --precision bfloat16 > bf16_1000.json
"""
from __future__ import annotations

import sys

if "--source" in sys.argv:  # before anything imports hepms
    sys.path.insert(0, sys.argv[sys.argv.index("--source") + 1])
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import hepms
    from hepms._machine import describe
    from hepms.config import load_config
    from hepms.study.dataset import prepare_data
    from hepms.study.plan import expand_studies
    from hepms.study.runner import build_model, train_config
    from hepms.train.trainer import Trainer

    torch.set_num_threads(args.threads)
    overrides = [f"data.path={args.data}", "progress=false", f"trainer.epochs={args.epochs}"]
    if args.precision:  # an older tree (--source) has no such key: only set it when asked
        overrides.append(f"trainer.precision={args.precision}")
    if args.max_events:
        overrides.append(f"data.max_events={args.max_events}")
    base = load_config(args.config, overrides)
    data = prepare_data(base, Path(args.cache), progress=False)
    runs = {(r.study, r.label): r.config for r in expand_studies(base) if r.column in ("", args.column)}
    cfg = runs[(args.study, args.run)]
    trainer = Trainer(build_model(cfg, data, args.seed), train_config(cfg, args.seed, None, False))
    started = time.process_time()
    history = trainer.fit(data.train, data.val)
    fit_cpu = time.process_time() - started
    keys = ("phase", "epoch", "train_loss", "val_loss", "val_auc_tau", "val_auc_event")
    return {"hepms": str(Path(hepms.__file__).parent), "machine": describe("cpu"),
            "run": f"{args.study}/{args.run}/{args.column}",
            "seed": args.seed, "max_events": args.max_events, "max_epochs": args.epochs,
            "precision": cfg["trainer"].get("precision", "float32"),
            "history": [{k: r[k] for k in keys} for r in history.epochs], "best": history.best,
            "fit_cpu_seconds": fit_cpu, "test": trainer.evaluate(data.test)}


def compare(before: list[str], after: list[str]) -> None:
    """Per seed: test AUCs of both versions; then the mean difference vs the seed-to-seed spread."""
    runs = {}
    for label, paths in (("before", before), ("after", after)):
        for path in paths:
            r = json.loads(Path(path).read_text())
            runs.setdefault(r["seed"], {})[label] = r
    seeds = sorted(s for s, v in runs.items() if len(v) == 2)
    print("| seed | epochs before / after | AUC tau before | after | AUC event before | after |")
    print("|---|---|---:|---:|---:|---:|")
    diffs: dict[str, list[float]] = {"auc_tau": [], "auc_event": []}
    values: dict[str, dict[str, list[float]]] = {"before": {"auc_tau": [], "auc_event": []},
                                                 "after": {"auc_tau": [], "auc_event": []}}
    for seed in seeds:
        b, a = runs[seed]["before"], runs[seed]["after"]
        print(f"| {seed} | {len(b['history'])} / {len(a['history'])} | {b['test']['auc_tau']:.4f} | "
              f"{a['test']['auc_tau']:.4f} | {b['test']['auc_event']:.4f} | {a['test']['auc_event']:.4f} |")
        for key in diffs:
            diffs[key].append(a["test"][key] - b["test"][key])
            values["before"][key].append(b["test"][key])
            values["after"][key].append(a["test"][key])
    for key in diffs:
        if len(seeds) > 1:
            print(f"{key}: mean over seeds before {statistics.mean(values['before'][key]):.4f} +- "
                  f"{statistics.stdev(values['before'][key]):.4f} (std), after "
                  f"{statistics.mean(values['after'][key]):.4f} +- {statistics.stdev(values['after'][key]):.4f}; "
                  f"paired difference after - before {statistics.mean(diffs[key]):+.4f} +- "
                  f"{statistics.stdev(diffs[key]) / len(seeds) ** 0.5:.4f} (std error)")


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="analyses/htautau/config/full.yaml")
    parser.add_argument("--data", default="data/full")
    parser.add_argument("--cache", default="runs/trial-profile/cache")
    parser.add_argument("--study", default="loss_balancing")
    parser.add_argument("--run", default="(w1, w2) = (1, 1)")
    parser.add_argument("--column", default="bce")
    parser.add_argument("--seed", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=12, help="at most, per phase")
    parser.add_argument("--max-events", type=int, default=8000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--source", default=None, help="import hepms from this folder")
    parser.add_argument("--precision", default=None, choices=("float32", "bfloat16"),
                        help="trainer.precision (default: the config's, float32)")
    parser.add_argument("--before", nargs="+", default=None, help="compare these results ...")
    parser.add_argument("--after", nargs="+", default=None, help="... with these (no training)")
    args = parser.parse_args(argv)
    if args.before or args.after:
        if not (args.before and args.after):
            parser.error("--before and --after go together")
        compare(args.before, args.after)
        return
    print(json.dumps(train(args), default=str))


if __name__ == "__main__":
    main()
