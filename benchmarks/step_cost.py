"""CPU cost of one training step of the study's full preset, and its numbers (for before/after).

Builds the (w1, w2) = (1, 1) BCE model of ``analyses/htautau/config/full.yaml`` (seed 1000) and
the first training batches of the full sample (batch 128 events, about 7,100 constituents), and
times forward + losses + backward + fused Adam step per batch, under
``hepms.validation(False)`` as in ``Trainer.fit``, with 1 torch thread. CPU time of the process
(``time.process_time``), in ``--blocks`` blocks of ``--steps`` steps; the JSON keeps every block
(the machine is shared: compare the minima and medians of interleaved runs).

``--numbers FILE`` saves, from a fresh model, the losses of the first step and the parameter
gradients (no optimizer step) of the first three batches, and the parameters after 20 fused-Adam
steps, so two versions can be compared (``--compare A B``). ``--profile N`` adds a torch.profiler table of N steps (op counts).
``--micro`` times single calls instead (pooling, broadcast-add). ``--source DIR`` imports hepms from another tree (``git archive`` plus the compiled ``_C``).

    python benchmarks/step_cost.py --data data/full --cache CACHE --json after_0.json
    python benchmarks/step_cost.py --source /tmp/base --data data/full --cache CACHE --json before_0.json
    python benchmarks/step_cost.py --compare before.pt after.pt
"""
from __future__ import annotations

import sys

if "--source" in sys.argv:  # before anything imports hepms
    sys.path.insert(0, sys.argv[sys.argv.index("--source") + 1])
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in type(f).__module__]

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from checkout_atomic import save_atomically, write_text_atomic  # this checkout's, not --source's


def _setup(args):
    import hepms
    from hepms.config import load_config
    from hepms.study.dataset import prepare_data
    from hepms.study.plan import expand_studies
    from hepms.study.runner import build_model, train_config
    from hepms.train.strategies import phases_for
    from hepms.train.trainer import Trainer

    base = load_config(args.config, [f"data.path={args.data}", "progress=false", "threads=1",
                                     "trainer.epochs=1"])
    data = prepare_data(base, Path(args.cache), progress=False)
    planned = {(r.study, r.label): r.config for r in expand_studies(base) if r.column in ("", "bce")}
    cfg = planned[("loss_balancing", "(w1, w2) = (1, 1)")]
    torch.manual_seed(1000)
    model = build_model(cfg, data, 1000)
    trainer = Trainer(model, train_config(cfg, 1000, Path("/tmp/step_cost_run"), progress=False))
    phase = phases_for("simultaneous")[0]
    batches = [data.train.slice(i * 128, (i + 1) * 128) for i in range(args.batches)]
    return hepms, model, trainer, phase, batches


def _micro(hepms, batch, repeats: int = 7, calls: int = 500) -> dict:
    """Per-call CPU microseconds (min over repeats) on the first batch's constituents ([N, 32]):
    the pooling forward + backward, and the broadcast-add of the equivariant blocks and its parts
    (``add`` alone bounds what a fused broadcast-add op could cost)."""
    ops = torch.ops.hepms
    offsets = batch.constituents.offsets.long()
    rows, sets = batch.constituents.values.shape[0], offsets.shape[0] - 1
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(rows, 32, generator=gen, requires_grad=True)
    per_set = torch.randn(sets, 32, generator=gen, requires_grad=True)
    h = torch.randn(rows, 32, generator=gen, requires_grad=True)
    g_pool = torch.randn(sets, 64, generator=gen)
    g_rows = torch.randn(rows, 32, generator=gen)

    def timed(f) -> float:
        best = float("inf")
        for _ in range(repeats):
            t = time.process_time()
            for _ in range(calls):
                f()
            best = min(best, (time.process_time() - t) / calls * 1e6)
        return best

    with hepms.validation(False):
        return {
            "rows": rows, "sets": sets,
            "mean_max_forward_backward_us": timed(lambda: ops.segment_mean_max(u, offsets).backward(g_pool)),
            "mean_max_forward_no_grad_us": timed(lambda: ops.segment_mean_max(u.detach(), offsets)),
            "broadcast_add_forward_backward_us": timed(
                lambda: (h + ops.segment_gather(per_set, offsets, rows, False)).backward(g_rows)),
            "gather_no_grad_us": timed(lambda: ops.segment_gather(per_set.detach(), offsets, rows, False)),
            "add_no_grad_us": timed(lambda: h.detach() + g_rows),
            "gather_plus_add_no_grad_us": timed(
                lambda: h.detach() + ops.segment_gather(per_set.detach(), offsets, rows, False)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="analyses/htautau/config/full.yaml")
    parser.add_argument("--data", default="data/full")
    parser.add_argument("--cache", default="runs/htautau-full/cache")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--steps", type=int, default=40, help="steps per timed block")
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--profile", type=int, default=0)
    parser.add_argument("--numbers", default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--label", default="")
    parser.add_argument("--source", default=None)
    parser.add_argument("--compare", nargs=2, default=None)
    parser.add_argument("--micro", action="store_true", help="per-call microbenchmarks only")
    args = parser.parse_args()
    if args.compare:
        a, b = (torch.load(p) for p in args.compare)
        summary = {"compared": args.compare, "losses_bit_identical": {}}
        for key in a["losses"]:
            same_loss = torch.equal(a['losses'][key], b['losses'][key])
            summary["losses_bit_identical"][key] = same_loss
            print(f"loss {key}: {a['losses'][key]!r} vs {b['losses'][key]!r} "
                  f"{'bit-identical' if same_loss else 'DIFFERENT'}")
        worst = 0.0
        for i, (ga, gb) in enumerate(zip(a["grads"], b["grads"])):
            for name in ga:
                diff = float((ga[name] - gb[name]).abs().max() / ga[name].abs().max().clamp_min(1e-30))
                worst = max(worst, diff)
        same = all(torch.equal(ga[n], gb[n]) for ga, gb in zip(a["grads"], b["grads"]) for n in ga)
        print(f"gradients: bit-identical={same}, max |diff| / max |grad| per tensor = {worst:.3g}")
        pa, pb = a["params_after_20_steps"], b["params_after_20_steps"]
        same_params = all(torch.equal(pa[n], pb[n]) for n in pa)
        print(f"parameters after 20 Adam steps: bit-identical={same_params}")
        summary.update(gradients_bit_identical=same, gradients_max_relative_diff=worst,
                       params_after_20_steps_bit_identical=same_params)
        if args.json:
            write_text_atomic(args.json, json.dumps(summary, indent=1))
        return
    torch.set_num_threads(1)
    hepms, model, trainer, phase, batches = _setup(args)
    from hepms.train.optim import make_optimizer  # after _setup: --source decides which hepms

    model.train()
    if args.numbers:
        record = {"losses": None, "grads": []}
        with hepms.validation(False):
            for b in batches[:3]:
                losses = trainer.batch_losses(phase, trainer.forward_batch(phase, b), b)
                model.zero_grad()
                sum(losses.values()).backward()
                if record["losses"] is None:
                    record["losses"] = {k: v.detach().clone() for k, v in losses.items()}
                record["grads"].append({n: p.grad.clone() for n, p in model.named_parameters()
                                        if p.grad is not None})
            # then 20 training steps (fused Adam): the parameters they end at
            opt = make_optimizer(model.parameters(), 1e-3, fused=True)  # the trainer's optimizer
            for b in batches[:20]:
                losses = trainer.batch_losses(phase, trainer.forward_batch(phase, b, mixed=True), b)
                opt.zero_grad()
                sum(losses.values()).backward()
                opt.step()
            record["params_after_20_steps"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        save_atomically(args.numbers, lambda tmp: torch.save(record, tmp))
        print("wrote", args.numbers, "hepms from", Path(hepms.__file__).parent)
        return
    if args.micro:
        _write(args, hepms, {"label": args.label, "micro": _micro(hepms, batches[0])})
        return
    opt = make_optimizer(model.parameters(), 1e-3, fused=True)  # the trainer's optimizer

    def step(b) -> None:
        losses = trainer.batch_losses(phase, trainer.forward_batch(phase, b, mixed=True), b)
        opt.zero_grad()
        sum(losses.values()).backward()
        opt.step()

    blocks = []
    with hepms.validation(False):
        for b in batches[:10]:  # warm-up
            step(b)
        for k in range(args.blocks):
            t = time.process_time()
            for i in range(args.steps):
                step(batches[i % len(batches)])
            blocks.append((time.process_time() - t) / args.steps * 1e3)
        table = None
        if args.profile:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for b in batches[:args.profile]:
                    step(b)
            table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=40)
            print(table)
    rows = int(sum(b.constituents.values.shape[0] for b in batches) / len(batches))
    _write(args, hepms, {
        "label": args.label, "ms_per_step_blocks": blocks, "min_ms": min(blocks),
        "median_ms": statistics.median(blocks), "steps_per_block": args.steps,
        "mean_constituents_per_batch": rows, "profile": table,
    })


def _write(args, hepms, result: dict) -> None:
    result["hepms"] = str(Path(hepms.__file__).parent)
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor(),
                         "cpus": os.cpu_count(), "python": platform.python_version(),
                         "torch": torch.__version__, "threads": torch.get_num_threads(),
                         "extension": hepms.extension_available(), "loadavg_end": os.getloadavg()}
    print(json.dumps({k: v for k, v in result.items() if k != "profile"}))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
