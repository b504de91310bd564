"""The ``hepms`` command line: ``hepms demo``, ``hepms info``, ``hepms generate``."""
from __future__ import annotations

import argparse
import platform
import sys
import time
from typing import Optional, Sequence

import torch

import hepms
from hepms._machine import cpu_model


def _median_ms(fn, repeats: int = 7) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * sorted(times)[len(times) // 2]


def _rounded(tensor: torch.Tensor) -> list:
    return torch.round(tensor.double(), decimals=2).tolist()


def demo(args: argparse.Namespace) -> int:
    """Pool jet constituents of different lengths without padding, with gradients, and time it."""
    torch.manual_seed(args.seed)
    print("hepms demo: segment pooling over variable-length sets (no padding)\n")
    print("Three jets with 3, 0 and 2 constituents, two features each (log pT, charge):")
    values = torch.tensor([[3.2, 1.0], [2.1, -1.0], [1.5, 0.0], [4.0, 1.0], [0.7, -1.0]])
    offsets = torch.tensor([0, 3, 3, 5])
    print(f"  values  = {_rounded(values)}")
    print(f"  offsets = {offsets.tolist()}   (jet b owns rows offsets[b]:offsets[b+1])")
    print(f"  segment_sum  -> {_rounded(hepms.segment_sum(values, offsets))}")
    print(f"  segment_mean -> {_rounded(hepms.segment_mean(values, offsets))}")
    maxima, argmax = hepms.segment_max(values, offsets)
    print(f"  segment_max  -> {_rounded(maxima)}, arg-max rows {argmax.tolist()}")
    print("  (the empty jet pools to 0 and its arg-max is -1)\n")

    leaf = values.clone().requires_grad_()
    hepms.segment_max(leaf, offsets)[0].sum().backward()
    print(f"Gradient of sum(max) w.r.t. the constituents: {_rounded(leaf.grad)}")
    print("  (each maximum sends its gradient to exactly one row)\n")

    counts = torch.poisson(torch.full((args.jets,), 30.0)).long().clamp(max=200)
    offsets = torch.zeros(args.jets + 1, dtype=torch.long)
    offsets[1:] = counts.cumsum(0)
    values = torch.randn(int(offsets[-1]), args.features)
    print(
        f"Timing on {args.jets} jets, {int(offsets[-1])} constituents, {args.features} features "
        f"({torch.get_num_threads()} threads, {cpu_model()}):"
    )
    with hepms.validation(False):
        ours_sum = _median_ms(lambda: hepms.segment_sum(values, offsets))
        ours_max = _median_ms(lambda: hepms.segment_max(values, offsets))
    ref_sum = _median_ms(lambda: torch.segment_reduce(values, "sum", offsets=offsets))
    ref_max = _median_ms(lambda: torch.segment_reduce(values, "max", offsets=offsets))
    floor = _median_ms(lambda: values.sum(0))
    backend = "compiled kernels" if hepms.extension_available() else "pure-PyTorch fallback"
    print(f"  hepms ({backend}): sum {ours_sum:7.1f} ms   max {ours_max:7.1f} ms")
    print(f"  torch.segment_reduce:       sum {ref_sum:7.1f} ms   max {ref_max:7.1f} ms")
    print(f"  one read of the values (values.sum(0)): {floor:.1f} ms")
    print("\nFull benchmarks: python benchmarks/segment.py")
    return 0


def info(args: argparse.Namespace) -> int:
    """Print how hepms was built and what it runs on."""
    print(f"hepms {hepms.__version__}, torch {torch.__version__}, Python {platform.python_version()}")
    if hepms.extension_available():
        from hepms import _C

        print(f"compiled kernels: yes (CUDA kernels built: {_C.with_cuda}, built against torch {_C.torch_version})")
    else:
        print("compiled kernels: NO (pure-PyTorch fallback in use)")
    print(f"CUDA available at run time: {torch.cuda.is_available()}")
    print(f"CPU threads: {torch.get_num_threads()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hepms", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p_demo = sub.add_parser("demo", help="a short tour of the pooling ops, with timings")
    p_demo.add_argument("--jets", type=int, default=50_000, help="jets in the timing example")
    p_demo.add_argument("--features", type=int, default=64, help="features per constituent")
    p_demo.add_argument("--seed", type=int, default=0, help="random seed")
    p_demo.set_defaults(func=demo)

    p_info = sub.add_parser("info", help="build and runtime information")
    p_info.set_defaults(func=info)

    sub.add_parser(
        "generate",
        help="generate H/Z->tautau events with Pythia 8 + FastJet (see hepms generate --help)",
        add_help=False,
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "generate":
        # The generator has its own option set; hand it the remaining arguments unchanged.
        from hepms.generate.cli import main as generate_main

        return generate_main(argv[1:])
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
