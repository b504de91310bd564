"""The ``hepms`` command line.

    hepms demo | info                         tour of the pooling ops; build information
    hepms generate OUT [options]              simulate H/Z->tautau samples (hepms.generate)
    hepms train    CONFIG [--set KEY=VALUE]   train one model into the run directory
    hepms evaluate CONFIG|RUN_DIR             test-set metrics, predictions and tables
    hepms plot     CONFIG|RUN_DIR             figures (hist + mplhep, PDF and PNG)
    hepms scan     CONFIG [--trials N]        repeated trials over the configured studies
    hepms config   [CONFIG] [--keys]          the resolved configuration, or every key documented
    hepms export   RUN|MODEL --format F [-o OUT]  TorchScript, torch.export (.pt2) or ONNX file
    hepms select   ...                        model selection (hepms.select, when installed)
    hepms --version

Every command takes -q (warnings only, no progress bars) and -v (debug messages). Progress bars are
drawn only when stderr is a terminal; otherwise (a log file) each phase, epoch and trial is one log
line.

CONFIG is a YAML file (see ``hepms config --keys``); ``--set section.key=value`` overrides a key
(the value is read as YAML). Configuration errors name the key and the allowed keys or values
and exit with status 2.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Optional, Sequence

from hepms import __version__
from hepms.console import add_verbosity_arguments, setup_logging, show_progress

if TYPE_CHECKING:
    import torch

# torch and the rest of hepms are imported inside the commands: `hepms --help` and
# `hepms --version` must answer at once (importing torch alone takes seconds).


def _median_ms(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def _rounded(tensor: "torch.Tensor") -> list:
    import torch

    return torch.round(tensor.double(), decimals=2).tolist()


def demo(args: argparse.Namespace) -> int:
    """Pool jet constituents of different lengths without padding, with gradients, and time it."""
    import torch

    from hepms import ops
    from hepms._machine import cpu_model

    torch.manual_seed(args.seed)
    print("hepms demo: segment pooling over variable-length sets (no padding)\n")
    print("Three jets with 3, 0 and 2 constituents, two features each (log pT, charge):")
    values = torch.tensor([[3.2, 1.0], [2.1, -1.0], [1.5, 0.0], [4.0, 1.0], [0.7, -1.0]])
    offsets = torch.tensor([0, 3, 3, 5])
    print(f"  values  = {_rounded(values)}")
    print(f"  offsets = {offsets.tolist()}   (jet b owns rows offsets[b]:offsets[b+1])")
    print(f"  segment_sum  -> {_rounded(ops.segment_sum(values, offsets))}")
    print(f"  segment_mean -> {_rounded(ops.segment_mean(values, offsets))}")
    maxima, argmax = ops.segment_max(values, offsets)
    print(f"  segment_max  -> {_rounded(maxima)}, arg-max rows {argmax.tolist()}")
    print("  (the empty jet pools to 0 and its arg-max is -1)\n")

    leaf = values.clone().requires_grad_()
    ops.segment_max(leaf, offsets)[0].sum().backward()
    print(f"Gradient of sum(max) w.r.t. the constituents: {_rounded(leaf.grad)}")
    print("  (each maximum sends its gradient to exactly one row)\n")

    counts = torch.poisson(torch.full((args.jets,), 30.0)).long().clamp(max=200)
    offsets = ops.offsets_from_counts(counts)
    values = torch.randn(int(offsets[-1]), args.features)
    print(
        f"Timing on {args.jets} jets, {int(offsets[-1])} constituents, {args.features} features "
        f"({torch.get_num_threads()} threads, {cpu_model()}):"
    )
    with ops.validation(False):
        ours_sum = _median_ms(lambda: ops.segment_sum(values, offsets))
        ours_max = _median_ms(lambda: ops.segment_max(values, offsets))
    ref_sum = _median_ms(lambda: torch.segment_reduce(values, "sum", offsets=offsets))
    ref_max = _median_ms(lambda: torch.segment_reduce(values, "max", offsets=offsets))
    floor = _median_ms(lambda: values.sum(0))
    backend = "compiled kernels" if ops.extension_available() else "pure-PyTorch fallback"
    print(f"  hepms ({backend}): sum {ours_sum:7.1f} ms   max {ours_max:7.1f} ms")
    print(f"  torch.segment_reduce:       sum {ref_sum:7.1f} ms   max {ref_max:7.1f} ms")
    print(f"  one read of the values (values.sum(0)): {floor:.1f} ms")
    print("\nFull benchmarks: python benchmarks/segment.py")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print how hepms was built and what it runs on."""
    import platform

    import torch

    import hepms
    from hepms import ops

    print(f"hepms {hepms.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
    if ops.extension_available():
        from hepms import _C

        print(f"compiled kernels: yes (CUDA kernels built: {_C.with_cuda}, built against torch {_C.torch_version})")
        print(f"CPU kernel variant: {_C.cpu_capability()} (AVX2 + FMA + F16C supported: {_C.cpu_supports_avx2()})")
    else:
        print("compiled kernels: NO (pure-PyTorch fallback in use)")
    print(f"CUDA available at run time: {torch.cuda.is_available()}")
    print(f"CPU threads: {torch.get_num_threads()}")
    return 0


# ----------------------------------------------------------------------------------------------
# Configured commands: train, evaluate, plot, scan, config
# ----------------------------------------------------------------------------------------------
def _load(args: argparse.Namespace):
    """(config, run_dir, kind) from the positional CONFIG (a YAML file or a run directory)."""
    import json
    from pathlib import Path

    from hepms.config import load_config

    source = Path(args.config) if args.config else None
    overrides = list(args.set or [])
    run_dir = Path(args.run_dir) if getattr(args, "run_dir", None) else None
    kind = None
    if source is not None and source.is_dir():
        if not (source / "config.yaml").is_file():
            from hepms.config_engine import ConfigError

            raise ConfigError(f"{source} is a folder without config.yaml (not a run directory)")
        run_dir = run_dir or source
        try:
            kind = json.loads((source / "manifest.json").read_text()).get("kind")
        except (OSError, ValueError):
            kind = None
    cfg = load_config(source, overrides)
    if not show_progress(args):
        cfg["progress"] = False  # -q, --no-progress, or not a terminal: log lines instead of bars
    if cfg["threads"] is not None:
        import torch

        torch.set_num_threads(cfg["threads"])
    return cfg, Path(run_dir or cfg["run_dir"]), kind


def _configured(func):
    """Run a configured command; configuration errors -> status 2, missing inputs -> 1."""

    def wrapper(args: argparse.Namespace) -> int:
        import logging

        from hepms.config_engine import ConfigError
        from hepms.generate.io import MissingBranchError

        setup_logging(args)
        if args.command != "config":  # at once, before the seconds that importing torch & co. take
            logging.getLogger("hepms.cli").info("hepms %s %s: loading", args.command, args.config)
        try:
            return func(args)
        except ConfigError as error:
            print(f"hepms {args.command}: config error: {error}", file=sys.stderr)
            return 2
        except (OSError, MissingBranchError) as error:  # missing, unreadable or incomplete inputs
            print(f"hepms {args.command}: error: {error}", file=sys.stderr)
            return 1

    wrapper.__doc__ = func.__doc__
    return wrapper


@_configured
def train(args: argparse.Namespace) -> int:
    """Train one model."""
    from hepms.study.single import train_run

    cfg, run_dir, _ = _load(args)
    result = train_run(cfg, run_dir, force=args.force, command=["hepms"] + sys.argv[1:])
    if result["status"] == "up to date":
        print(f"{run_dir}/model.pt is up to date (same settings and sample); --force retrains")
        return 0
    best = {k: v.get("epoch") for k, v in (result.get("best") or {}).items()}
    last = result.get("last_epoch") or {}
    print(f"trained {result['epochs']} epochs in {result['seconds']:.1f} s (best epoch per phase: {best}); "
          f"validation AUC tau {last.get('val_auc_tau', float('nan')):.4f}, "
          f"event {last.get('val_auc_event', float('nan')):.4f} (last epoch)")
    print(f"wrote {result['model']} and {run_dir}/train/ (checkpoint, metrics.csv, metrics.json)")
    return 0


@_configured
def evaluate(args: argparse.Namespace) -> int:
    """Evaluate a trained model (or rebuild a scan's tables)."""
    cfg, run_dir, kind = _load(args)
    if kind == "scan":
        from hepms.study.scan import build_outputs

        out = build_outputs(cfg, run_dir, plots=False)
        print(f"{out['finished_trials']} finished trials in {out['configurations_with_results']}/"
              f"{out['configurations']} configurations; wrote {len(out['tables'])} table files to {run_dir}/tables")
        return 0
    from hepms.study.runner import format_metric
    from hepms.study.single import evaluate_run

    out = evaluate_run(cfg, run_dir, model=args.model)
    m = out["metrics"]
    wp = cfg["evaluate"]["tau_efficiency"]
    print(f"test AUC: tau ID {format_metric(m['auc_tau'])}, H/Z {m['auc_event']:.4f}; light-jet rejection at "
          f"{wp:.0%} tau efficiency {format_metric(m['rejection_tau_wp'], 2)} (working point: evaluate.tau_efficiency)")
    print("wrote " + ", ".join(out["files"]))
    return 0


@_configured
def plot(args: argparse.Namespace) -> int:
    """Draw the figures of a run or a scan."""
    cfg, run_dir, kind = _load(args)
    if kind == "scan":
        from hepms.study.scan import build_outputs

        out = build_outputs(cfg, run_dir, plots=True, tables=False)
        files = out["figures"]
    else:
        from hepms.study.single import plot_run

        files = [str(p) for p in plot_run(cfg, run_dir)]
    print(f"wrote {len(files)} figure files to {run_dir}/figures (tau-ID working point for the versus-pT "
          f"figures: {cfg['evaluate']['tau_efficiency']:.0%} efficiency, evaluate.tau_efficiency)")
    return 0


@_configured
def scan(args: argparse.Namespace) -> int:
    """Run the configured studies' trials (resumable), then tables and figures."""
    from hepms.study.scan import describe_trial, exit_on_sigterm, run_scan

    cfg, run_dir, _ = _load(args)
    exit_on_sigterm()  # a killed scan releases its trial lock and records itself as interrupted

    def report(run, trial, result) -> None:
        print("  " + describe_trial(run, trial, result), flush=True)

    plots = False if args.no_plots else None
    summary = run_scan(cfg, run_dir, trials=args.trials, only=args.only or (), max_trials=args.max_trials,
                       plots=plots, command=["hepms"] + sys.argv[1:], on_trial=report, dask=args.dask)
    print(f"trials: {summary['trained']} trained, {summary['skipped']} already done, {summary['busy']} busy "
          f"elsewhere, {summary['remaining']} left for a later run (of {summary['total']})")
    print(f"{summary['finished_trials']} finished trials in {summary['configurations_with_results']}/"
          f"{summary['configurations']} configurations; {len(summary['tables'])} table files, "
          f"{len(summary['figures'])} figure files under {run_dir}")
    return 0


@_configured
def config_cmd(args: argparse.Namespace) -> int:
    """Print the resolved configuration or the documented keys."""
    from hepms.config import describe
    from hepms.config_engine import dump_yaml

    if args.keys:
        print(describe())
        return 0
    cfg, _, _ = _load(args)
    print(dump_yaml(cfg), end="")
    return 0


#: ``hepms export`` formats and the suffix of their default output name.
EXPORT_FORMATS = {"torchscript": ".torchscript.pt", "export": ".pt2", "onnx": ".onnx"}


def export_cmd(args: argparse.Namespace) -> int:
    """Export a trained model (model file, run or trial directory) for serving."""
    from pathlib import Path

    from hepms.export import export_onnx, export_program, export_torchscript
    from hepms.model_file import load_model, model_path

    writers = {"torchscript": export_torchscript, "export": export_program, "onnx": export_onnx}
    try:
        source = model_path(args.model)
        out = Path(args.output) if args.output else source.with_name(
            source.stem + EXPORT_FORMATS[args.format])
        if out.resolve() == source.resolve():
            raise ValueError(f"the output {out} is the model file itself: choose another with -o")
        model = load_model(source).inference_model()
        path = writers[args.format](model, out)
    except (OSError, ValueError, TypeError, ImportError) as error:  # TypeError: not a MultiStep
        print(f"hepms export: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path} ({args.format}, from {source})")
    return 0


def _add_config_arguments(p: argparse.ArgumentParser, run_dir: bool = True) -> None:
    p.add_argument("config", help="YAML configuration file, or a run directory (uses its config.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a key, e.g. --set trainer.epochs=5 (repeatable; value read as YAML)")
    if run_dir:
        p.add_argument("--run-dir", help="output folder (default: the config's run_dir, or CONFIG if a run directory)")
    add_verbosity_arguments(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepms", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"hepms {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_demo = sub.add_parser("demo", help="a short tour of the pooling ops, with timings")
    p_demo.add_argument("--jets", type=int, default=50_000, help="jets in the timing example")
    p_demo.add_argument("--features", type=int, default=64, help="features per constituent")
    p_demo.add_argument("--seed", type=int, default=0, help="random seed")
    add_verbosity_arguments(p_demo, progress=False)
    p_demo.set_defaults(func=demo)

    p_info = sub.add_parser("info", help="build and runtime information")
    add_verbosity_arguments(p_info, progress=False)
    p_info.set_defaults(func=info)

    sub.add_parser(
        "generate",
        help="generate H/Z->tautau events with Pythia 8 + FastJet (see hepms generate --help)",
        add_help=False,
    )

    p_train = sub.add_parser("train", help="train one model (run directory: config, checkpoints, metrics log)",
                             description="Train the configured multi-step model into the run directory. An "
                             "interrupted training continues from its checkpoint; a finished one is not redone.")
    _add_config_arguments(p_train)
    p_train.add_argument("--force", action="store_true", help="retrain even if model.pt is up to date")
    p_train.set_defaults(func=train)

    p_eval = sub.add_parser("evaluate", help="test-set metrics, predictions and tables of a trained model",
                            description="Evaluate run_dir/model.pt on the test part (metrics.json, "
                            "predictions.npz, tables/evaluation.md). On a scan's run directory: rebuild its tables.")
    _add_config_arguments(p_eval)
    p_eval.add_argument("--model", metavar="FILE|RUN|TRIAL", help="the model to evaluate: a model file, "
                        "or a run or scan trial directory (default: RUN_DIR/model.pt)")
    p_eval.set_defaults(func=evaluate)

    p_plot = sub.add_parser("plot", help="figures of a run or a scan (PDF + PNG)",
                            description="Draw the figures of an evaluated run (ROC, scores, efficiency and "
                            "rejection versus pT, loss weights, latent space for k = 2) or of a scan (also box "
                            "plots and loss weights over trials).")
    _add_config_arguments(p_plot)
    p_plot.set_defaults(func=plot)

    p_scan = sub.add_parser("scan", help="repeated trials over the configured studies, then tables and figures",
                            description="Train every configuration of scan.studies scan.trials times (trial-major), "
                            "skipping finished trials and continuing interrupted ones, then write the tables "
                            "(Markdown + JSON) and figures.")
    _add_config_arguments(p_scan)
    p_scan.add_argument("--trials", type=int, help="trials per configuration (default: scan.trials)")
    p_scan.add_argument("--only", action="append", metavar="STUDY[/LABEL [COLUMN]]", help="run only these studies or runs")
    p_scan.add_argument("--max-trials", type=int, help="train at most this many trials in this call")
    p_scan.add_argument("--no-plots", action="store_true", help="tables only")
    p_scan.add_argument("--dask", metavar="SCHEDULER|local:N",
                        help="run the trials as dask.distributed tasks: the address of a running scheduler "
                        "(e.g. a dask-jobqueue cluster's scheduler_address; the run directory must be on a "
                        "file system the workers share) or local:N for N single-threaded local worker processes "
                        "(without distributed's 5-minute worker-ttl, so a paused or sleeping machine does not "
                        "restart a running trial; a scheduler address keeps its own dask configuration)")
    p_scan.set_defaults(func=scan)

    p_cfg = sub.add_parser("config", help="print the resolved configuration, or every key (--keys)")
    p_cfg.add_argument("config", nargs="?", help="YAML configuration file or run directory")
    p_cfg.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a key")
    p_cfg.add_argument("--keys", action="store_true", help="list every key with its default and meaning")
    add_verbosity_arguments(p_cfg, progress=False)
    p_cfg.set_defaults(func=config_cmd)

    p_export = sub.add_parser(
        "export", help="write a trained model as TorchScript, torch.export or ONNX",
        description="Export a model file (or the model.pt of a run or scan trial directory) with its "
        "standardisation and feature spec: raw CSR tensors in, scores out. torchscript and export "
        "(.pt2) files need `import hepms` where they are loaded (the segment ops); onnx files run in "
        "onnxruntime without hepms or torch. Every entry point checks its offsets (ONNX: NaN outputs "
        "and inputs_valid = false).")
    p_export.add_argument("model", metavar="RUN_OR_MODEL", help="model file, or run / trial directory")
    p_export.add_argument("--format", required=True, choices=sorted(EXPORT_FORMATS),
                          help="torchscript (torch.jit.script), export (torch.export program, .pt2) or onnx")
    p_export.add_argument("-o", "--output", metavar="OUT",
                          help="output file (default: next to the model file, model.torchscript.pt / "
                          "model.pt2 / model.onnx)")
    add_verbosity_arguments(p_export, progress=False)
    p_export.set_defaults(func=export_cmd)

    sub.add_parser("select", help="model selection (dispatched to hepms.select; see hepms select --help)",
                   add_help=False)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        # The generator has its own option set; hand it the remaining arguments unchanged.
        from hepms.generate.cli import main as generate_main

        return generate_main(argv[1:])
    if argv and argv[0] == "select":
        # Model selection has its own option set too (hepms.select.cli).
        from hepms.select.cli import main as select_main

        return int(select_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    setup_logging(args)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
