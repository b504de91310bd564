#!/usr/bin/env python
"""Reproduce the multi-step H->tautau study with hepms: one command per preset.

    python analyses/htautau/run.py quick             # README demo (~10 min on 2 free cores)
    python analyses/htautau/run.py full --trials 25  # the study's settings (days on a laptop)
    python analyses/htautau/run.py full --publish-only

Each preset is ``analyses/htautau/config/<preset>.yaml`` run by ``hepms scan`` (same as
``hepms scan analyses/htautau/config/<preset>.yaml``): every configuration x trial writes its own
result, so a run can be stopped at any time and continued later; finished trials are skipped.
Afterwards the tables, a few key PNG figures, the configuration and the manifest are copied to
``analyses/htautau/results/<preset>/`` (small files meant to be committed).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

from hepms.console import add_verbosity_arguments, setup_logging, show_progress

HERE = Path(__file__).resolve().parent
PRESETS = ("quick", "full")

#: Figures copied next to the tables (PNG only: small, viewable on a code host).
KEY_FIGURES = (
    "k_scan_boxplot",
    "roc_tau_compare_bce",
    "roc_event_compare_bce",
    "weights_w1_w2=1_1-bce",
    "weights_uncertaintyweighting-bce",
    "weights_uncertaintyweighting-mse",
    "weights_GradNorm-bce",
    "latent_space",
    "tau_efficiency_vs_pt",
    "light_rejection_vs_pt",
    "scores_tau",
    "scores_event",
)


def publish(run_dir: Path, target: Path) -> tuple[list[Path], list[Path]]:
    """Copy tables, key PNG figures, config.yaml and manifest.json of ``run_dir`` to ``target``.

    Returns ``(copied, kept)``. Tables are rebuilt from the trial records, which every machine
    has; most single-run and weight figures need the trials' run outputs (predictions, per-epoch
    weights) in ``run_dir``, which stay on the machine that trained them. A key figure that
    ``run_dir`` lacks but ``target`` already holds is therefore kept, with its caption (which
    names the configuration and trials it shows), instead of being deleted by a publication from
    a machine that could not redraw it: ``kept`` lists those.
    """
    copied: list[Path] = []
    if (target / "tables").exists():
        shutil.rmtree(target / "tables")  # tables of an older run must not linger
    for source in sorted((run_dir / "tables").glob("*")):
        if source.suffix in (".md", ".json"):
            dest = target / "tables" / source.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            copied.append(dest)
    figures = target / "figures"
    old_captions = _json_field(figures / "captions.json", "captions", {})
    kept = [f"{stem}.png" for stem in KEY_FIGURES
            if not (run_dir / "figures" / f"{stem}.png").is_file() and (figures / f"{stem}.png").is_file()]
    if figures.exists() and not kept:
        shutil.rmtree(figures)  # figures no longer made must not linger
    for path in figures.iterdir() if kept else ():
        if path.name not in kept:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
    for stem in KEY_FIGURES:
        source = run_dir / "figures" / f"{stem}.png"
        if source.is_file():
            dest = figures / source.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest)
            copied.append(dest)
    captions = run_dir / "figures" / "captions.json"
    if (captions.is_file() or kept) and figures.is_dir():
        # What each published figure shows (configuration, trials, bands), next to the PNGs.
        payload = (json.loads(captions.read_text()) if captions.is_file()
                   else {"format": "hepms.captions/1", "captions": {}})
        payload["captions"] = {k: v for k, v in payload.get("captions", {}).items()
                               if (figures / k).is_file()}
        payload["captions"].update({k: old_captions[k] for k in kept if k in old_captions})
        dest = figures / "captions.json"
        dest.write_text(json.dumps(payload, indent=1, ensure_ascii=False) + "\n")
        copied.append(dest)
    earlier = _json_field(target / "manifest.json", "invocations", [])
    for name in ("config.yaml", "manifest.json"):
        if not (run_dir / name).is_file():
            continue
        target.mkdir(parents=True, exist_ok=True)
        if name == "manifest.json" and earlier:
            # The published manifest keeps the invocations of earlier machines (a fresh clone's
            # run directory knows only its own), oldest first.
            manifest = json.loads((run_dir / name).read_text())
            own = manifest.get("invocations", [])
            ids = {item.get("id") for item in own}
            manifest["invocations"] = [item for item in earlier
                                       if isinstance(item, dict) and item.get("id") not in ids] + own
            (target / name).write_text(json.dumps(manifest, indent=1) + "\n")
        else:
            shutil.copy2(run_dir / name, target / name)
        copied.append(target / name)
    return copied, [figures / name for name in kept]


def _json_field(path: Path, key: str, default: Any) -> Any:
    """``key`` of the JSON object in ``path``; ``default`` when the file is missing or unreadable
    (an earlier publication's captions or manifest: losing them must not stop a publication)."""
    try:
        value = json.loads(path.read_text()).get(key, default)
    except (OSError, ValueError, AttributeError):
        return default
    return value if isinstance(value, type(default)) else default


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=PRESETS, help="configuration preset (config/<preset>.yaml)")
    parser.add_argument("--trials", type=int, help="trials per configuration (default: the preset's scan.trials)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    parser.add_argument("--max-trials", type=int, help="train at most this many trials now")
    parser.add_argument("--only", action="append", metavar="STUDY[/LABEL [COLUMN]]", help="only these studies or runs")
    parser.add_argument("--no-plots", action="store_true", help="tables only")
    parser.add_argument("--dask", metavar="SCHEDULER|local:N",
                        help="run the trials on a dask.distributed cluster (as hepms scan --dask)")
    parser.add_argument("--publish-only", action="store_true", help="rebuild tables/figures and copy them; train nothing")
    parser.add_argument("--results", type=Path, help="where to publish (default: analyses/htautau/results/<preset>)")
    parser.add_argument("--no-publish", action="store_true", help="do not copy results into analyses/htautau/results")
    add_verbosity_arguments(parser)  # -q, -v, --no-progress: as every hepms command
    args = parser.parse_args(argv)
    setup_logging(args)

    import torch

    from hepms.config import ConfigError, load_config
    from hepms.study.scan import build_outputs, run_scan

    try:
        cfg = load_config(HERE / "config" / f"{args.preset}.yaml", args.set)
    except ConfigError as error:
        print(f"run.py: config error: {error}", file=sys.stderr)
        return 2
    if not show_progress(args):
        cfg["progress"] = False  # -q, --no-progress, or not a terminal: log lines instead of bars
    if cfg["threads"] is not None:
        torch.set_num_threads(cfg["threads"])
    run_dir = Path(cfg["run_dir"])
    from hepms.study.scan import exit_on_sigterm

    exit_on_sigterm()  # a killed run releases its lock and records itself as interrupted
    if args.publish_only:
        out = build_outputs(cfg, run_dir, plots=not args.no_plots)
        print(f"{out['finished_trials']} finished trials in {out['configurations_with_results']}/{out['configurations']} configurations")
    else:
        from hepms.study.scan import describe_trial

        def report(run, trial, result) -> None:
            print("  " + describe_trial(run, trial, result), flush=True)

        out = run_scan(cfg, run_dir, trials=args.trials, only=args.only or (), max_trials=args.max_trials,
                       plots=False if args.no_plots else None, command=[sys.executable] + sys.argv,
                       on_trial=report, dask=args.dask)
        print(f"trials: {out['trained']} trained, {out['skipped']} already done, {out['remaining']} left "
              f"(of {out['total']}); {out['finished_trials']} finished in total")
    if not args.no_publish:
        target = args.results or HERE / "results" / args.preset
        copied, kept = publish(run_dir, target)
        print(f"published {len(copied)} files to {target}")
        if kept:
            print(f"kept {len(kept)} earlier figures that need run outputs this machine does not "
                  f"have (their captions say which trials they show): "
                  f"{', '.join(p.name for p in kept)}")
    for name in ("loss_balancing", "k_scan", "monitor_ablation", "comparisons"):
        table = run_dir / "tables" / f"{name}.md"
        if table.is_file():
            print()
            print(table.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
