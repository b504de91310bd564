"""hepms.train: loss formulas, balancers, strategies, the Trainer (early stopping, checkpoints,
determinism, logs) and a short training on generated events."""
from __future__ import annotations

import copy
import csv
import json
import math

import pytest
import torch

from hepms.data import toy_dataset
from hepms.nn import MultiStep
from hepms.train import (
    DynamicWeightAverage,
    FixedWeights,
    GradNorm,
    Trainer,
    TrainConfig,
    UncertaintyWeighting,
    bce_loss,
    make_balancer,
    momentum_loss,
    mse_probability_loss,
    phases_for,
)
from hepms.train.trainer import EarlyStopping


pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------------
# Losses
# ------------------------------------------------------------------------------------------------
def test_bce_is_the_stable_logit_form():
    y = torch.tensor([-30.0, -1.0, 0.0, 2.0, 40.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    expected = (y.clamp_min(0) - y * t + torch.log1p(torch.exp(-y.abs()))).mean()
    torch.testing.assert_close(bce_loss(y, t), expected)
    w = torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    per = y.clamp_min(0) - y * t + torch.log1p(torch.exp(-y.abs()))
    torch.testing.assert_close(bce_loss(y, t, w), (w * per).sum() / w.sum())


def test_mse_probability_and_momentum_losses():
    y = torch.tensor([0.0, 2.0])
    t = torch.tensor([1.0, 1.0])
    torch.testing.assert_close(
        mse_probability_loss(y, t), ((torch.sigmoid(y) - t) ** 2).mean()
    )
    pred = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [9.0, 9.0, 9.0]])
    true = torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.5, 1.5], [0.0, 0.0, 0.0]])
    mask = torch.tensor([True, True, False])  # the third jet is not a tau: no target
    torch.testing.assert_close(momentum_loss(pred, true, mask), torch.tensor((1.0 + 1.0) / 2))
    assert float(momentum_loss(pred, true, torch.zeros(3, dtype=torch.bool))) == 0.0
    with pytest.raises(ValueError, match="differ"):
        bce_loss(torch.zeros(3), torch.zeros(2))


# ------------------------------------------------------------------------------------------------
# Balancers on hand-made losses
# ------------------------------------------------------------------------------------------------
def test_uncertainty_weighting_value_and_log_variance_gradient():
    uw = UncertaintyWeighting(["tau", "event"], init_log_variance=0.0)
    with torch.no_grad():
        uw.log_variance.copy_(torch.tensor([0.3, -0.7]))
    losses = {"tau": torch.tensor(2.0), "event": torch.tensor(0.5)}
    total = uw.combine(losses)
    s = torch.tensor([0.3, -0.7])
    l = torch.tensor([2.0, 0.5])
    # L = sum(L_i / (2 sigma_i^2) + log sigma_i) with s_i = log sigma_i^2
    sigma2 = torch.exp(s)
    torch.testing.assert_close(total, (l / (2 * sigma2) + torch.log(torch.sqrt(sigma2))).sum())
    total.backward()
    # dL/ds_i = -0.5 exp(-s_i) L_i + 0.5: zero at the optimum sigma_i^2 = L_i
    torch.testing.assert_close(uw.log_variance.grad, -0.5 * torch.exp(-s) * l + 0.5)
    torch.testing.assert_close(
        torch.tensor(list(uw.weights().values())), 0.5 * torch.exp(-s)
    )
    assert uw.trainable_parameters() == [uw.log_variance]


def test_uncertainty_weighting_converges_to_sigma2_equal_loss():
    uw = UncertaintyWeighting(["a", "b"])
    opt = torch.optim.SGD(uw.trainable_parameters(), lr=0.5)
    losses = {"a": torch.tensor(4.0), "b": torch.tensor(0.25)}
    for _ in range(300):
        opt.zero_grad()
        uw.combine(losses).backward()
        opt.step()
    torch.testing.assert_close(torch.exp(uw.log_variance.detach()), torch.tensor([4.0, 0.25]),
                               rtol=1e-3, atol=1e-3)


def test_gradnorm_lowers_the_weight_of_the_task_with_the_larger_gradient():
    shared = torch.nn.Parameter(torch.ones(2))
    gn = GradNorm(["a", "b"], alpha=1.5, lr=0.01, shared=shared)
    # ||grad L_a|| = 4, ||grad L_b|| = 1; at the first step both loss ratios are 1, so the target
    # is the mean weighted norm 2.5: task a is above it (weight down), b below (weight up).
    losses = {"a": 4.0 * shared[0], "b": 1.0 * shared[1]}
    total = gn.combine(losses)
    torch.testing.assert_close(total, torch.tensor(5.0))  # weights before the update: 1, 1
    torch.testing.assert_close(gn.last_grad_norms, torch.tensor([4.0, 1.0]))
    w = gn.weight_vector()
    assert w[0] < 1.0 < w[1]
    torch.testing.assert_close(w.sum(), torch.tensor(2.0))  # renormalised to the task count
    total.backward()  # the graph is still usable for the model update
    torch.testing.assert_close(shared.grad, torch.tensor([4.0, 1.0]))


def test_gradnorm_raises_the_weight_of_the_slower_task():
    shared = torch.nn.Parameter(torch.ones(2))
    gn = GradNorm(["a", "b"], alpha=1.0, lr=0.01, shared=shared)
    # Equal gradient norms (1, 1); first step: equal ratios -> no change.
    gn.combine({"a": shared[0] + 1.0, "b": shared[1] + 1.0})
    torch.testing.assert_close(gn.weight_vector(), torch.ones(2))
    # Second step: task b's loss halved (it trains faster), a's did not: a gets more weight.
    gn.combine({"a": shared[0] + 1.0, "b": shared[1] + 0.0})
    w = gn.weight_vector()
    assert w[0] > 1.0 > w[1]


def test_gradnorm_does_not_update_in_eval_or_no_grad_and_checkpoints():
    shared = torch.nn.Parameter(torch.ones(2))
    gn = GradNorm(["a", "b"], shared=shared)
    gn.eval()
    gn.combine({"a": 4.0 * shared[0], "b": shared[1]})
    torch.testing.assert_close(gn.weight_vector(), torch.ones(2))
    gn.train()
    with torch.no_grad():
        gn.combine({"a": 4.0 * shared[0], "b": shared[1]})
    torch.testing.assert_close(gn.weight_vector(), torch.ones(2))
    gn.combine({"a": 4.0 * shared[0], "b": shared[1]})
    state = gn.state_dict()
    assert "_shared" not in str(list(state))  # the model's layer is not part of the balancer
    other = GradNorm(["a", "b"], shared=shared)
    other.load_state_dict(state)
    for g in (gn, other):  # identical next step, Adam moments included
        g.combine({"a": 3.0 * shared[0], "b": 2.0 * shared[1]})
    torch.testing.assert_close(gn.weight_vector(), other.weight_vector(), rtol=0, atol=0)
    with pytest.raises(RuntimeError, match="shared layer"):
        GradNorm(["a"]).combine({"a": shared.sum()})


def test_dwa_weights_from_loss_ratios():
    dwa = DynamicWeightAverage(["a", "b"], temperature=2.0)
    torch.testing.assert_close(dwa.weight_vector(), torch.ones(2, dtype=torch.float64))
    dwa.end_epoch_with(torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(dwa.weight_vector(), torch.ones(2, dtype=torch.float64))
    dwa.end_epoch_with(torch.tensor([0.5, 1.8]))  # ratios 0.5 and 0.9
    r = torch.tensor([0.5, 0.9], dtype=torch.float64)
    expected = 2 * torch.exp(r / 2.0) / torch.exp(r / 2.0).sum()
    torch.testing.assert_close(dwa.weight_vector(), expected)
    assert dwa.weights()["b"] > dwa.weights()["a"]  # the slower task gets more weight


def test_dwa_accumulates_epoch_means_in_training_mode_only():
    dwa = DynamicWeightAverage(["a", "b"], temperature=1.0)
    x = torch.tensor(1.0, requires_grad=True)
    for epoch_losses in ([(2.0, 4.0), (4.0, 4.0)], [(1.5, 4.0), (1.5, 4.0)]):
        for a, b in epoch_losses:
            dwa.combine({"a": x * a, "b": x * b})
        with torch.no_grad():  # validation: ignored
            dwa.combine({"a": x * 100.0, "b": x * 100.0})
        dwa.epoch_end()
    # epoch means (3, 4) then (1.5, 4): ratios (0.5, 1)
    r = torch.tensor([0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(dwa.weight_vector(), 2 * torch.softmax(r, 0))


def test_fixed_weights_and_bad_balancer_configs():
    fixed = FixedWeights({"tau": 0.1, "event": 1.0})
    total = fixed.combine({"tau": torch.tensor(2.0), "event": torch.tensor(3.0)})
    torch.testing.assert_close(total, torch.tensor(3.2))
    assert fixed.weights() == pytest.approx({"tau": 0.1, "event": 1.0})
    with pytest.raises(ValueError, match=">= 0"):
        FixedWeights({"tau": -1.0, "event": 1.0})
    with pytest.raises(ValueError, match="finite"):
        FixedWeights({"tau": math.nan, "event": 1.0})
    with pytest.raises(ValueError, match="all loss weights are zero"):
        FixedWeights({"tau": 0.0, "event": 0.0})
    with pytest.raises(ValueError, match="unknown balancer"):
        make_balancer("magic", ["tau", "event"])
    with pytest.raises(ValueError, match="missing"):
        make_balancer("fixed", ["tau", "event"], weights={"tau": 1.0})
    with pytest.raises(ValueError, match="bad option"):
        make_balancer("gradnorm", ["tau"], beta=2)
    with pytest.raises(ValueError, match="alpha"):
        GradNorm(["a"], alpha=-1)
    with pytest.raises(ValueError, match="temperature"):
        DynamicWeightAverage(["a"], temperature=0)
    with pytest.raises(ValueError, match="missing losses"):
        fixed.combine({"tau": torch.tensor(1.0)})


# ------------------------------------------------------------------------------------------------
# Config errors
# ------------------------------------------------------------------------------------------------
def test_bad_trainer_configuration_raises():
    model = MultiStep(8, 4, seed=0)
    with pytest.raises(ValueError, match="unknown balancer"):
        Trainer(model, balancer="magic")
    with pytest.raises(ValueError, match="unknown strategy"):
        Trainer(model, strategy="yolo")
    with pytest.raises(ValueError, match="unknown upstream loss"):
        Trainer(model, upstream_loss="hinge")
    with pytest.raises(ValueError, match="lr"):
        Trainer(model, lr=-1.0)
    with pytest.raises(ValueError, match="batch_size"):
        Trainer(model, batch_size=0)
    with pytest.raises(ValueError, match="w1_zero"):
        Trainer(model, strategy="w1_zero", balancer="uncertainty")
    with pytest.raises(ValueError, match=">= 0"):
        Trainer(model, balancer_options={"weights": {"tau": -0.1, "event": 1.0}}).fit(
            toy_dataset(20, seed=0), toy_dataset(10, seed=1)
        )
    with pytest.raises(ValueError, match="truth"):
        Trainer(MultiStep(8, 4, connection="additional", k=3), strategy="pretrain_truth")
    with pytest.raises(ValueError, match="patience"):
        TrainConfig(patience=0)
    # a config object plus keyword overrides
    trainer = Trainer(model, TrainConfig(balancer="dwa", lr=5e-4), max_epochs=3)
    assert (trainer.config.balancer, trainer.config.lr, trainer.config.max_epochs) == ("dwa", 5e-4, 3)
    assert trainer.config.patience == 10 and trainer.config.lr == 5e-4  # the study's defaults
    assert TrainConfig().lr == 1e-3


def test_wrong_feature_count_is_rejected_before_training():
    trainer = Trainer(MultiStep(8, 5, seed=0), progress=False)
    with pytest.raises(ValueError, match="4 jet features but the model expects 5"):
        trainer.fit(toy_dataset(20, seed=0), toy_dataset(10, seed=1))
    trainer = Trainer(MultiStep(6, 4, seed=0), progress=False)
    with pytest.raises(ValueError, match="8 constituent features but the model expects 6"):
        trainer.fit(toy_dataset(20, seed=0), toy_dataset(10, seed=1))
    trainer = Trainer(MultiStep(8, 4, regression_outputs=3, seed=0), progress=False)
    with pytest.raises(ValueError, match="no jet_targets"):
        trainer.fit(toy_dataset(20, seed=0, regression_outputs=0), toy_dataset(10, seed=1))


# ------------------------------------------------------------------------------------------------
# Strategies: which parameters move
# ------------------------------------------------------------------------------------------------
def _state(module: torch.nn.Module) -> dict:
    return copy.deepcopy(module.state_dict())


def _equal_states(a, b) -> bool:
    """Exact equality of (nested) states: tensors bit for bit."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return (isinstance(b, dict) and list(a) == list(b)
                and all(_equal_states(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_equal_states(x, y) for x, y in zip(a, b))
    return a == b


def test_phases_of_the_strategies():
    assert [p.name for p in phases_for("step_by_step")] == ["upstream", "downstream"]
    assert [p.name for p in phases_for("pretrain_truth")] == [
        "pretrain_upstream", "pretrain_downstream", "reoptimise"]
    joint = phases_for("simultaneous", regression=True)[0]
    assert joint.tasks == ("tau", "momentum", "event")


def test_step_by_step_freezes_the_upstream_in_the_second_phase(tmp_path):
    train, val = toy_dataset(120, seed=1), toy_dataset(40, seed=2)
    model = MultiStep(8, 4, seed=0)
    trainer = Trainer(model, strategy="step_by_step", max_epochs=2, batch_size=32,
                      progress=False, checkpoint_dir=str(tmp_path))
    history = trainer.fit(train, val, stop_after=2)  # phase 1 done, phase 2 not started
    assert history.interrupted
    tau_after_phase1 = _state(model.tau)
    event_after_phase1 = _state(model.event)
    history = Trainer(model, strategy="step_by_step", max_epochs=2, batch_size=32,
                      progress=False, checkpoint_dir=str(tmp_path)).fit(
        train, val, resume_from=tmp_path)
    assert [r["phase"] for r in history.epochs] == ["upstream"] * 2 + ["downstream"] * 2
    assert _equal_states(_state(model.tau), tau_after_phase1)  # frozen
    assert not _equal_states(_state(model.event), event_after_phase1)  # trained
    assert all(p.requires_grad for p in model.parameters())  # unfrozen afterwards


@pytest.mark.parametrize("connection,k", [("direct", 1), ("additional", 3)])
def test_frozen_upstream_is_evaluated_once_per_phase_with_the_same_result(monkeypatch, connection, k):
    # Step-by-step's downstream phase caches the frozen tau model's outputs per jet: the
    # history must equal the one computed batch by batch, with the tau model run only for the
    # cache (batches of eval_batch_size 64), not for every batch of every epoch. Equal up to float
    # rounding: a matrix product's rounding may depend on the number of rows in the batch.
    train, val = toy_dataset(150, seed=1), toy_dataset(50, seed=2)

    def fit(cached: bool):
        model = MultiStep(8, 4, connection=connection, k=k, seed=0)
        trainer = Trainer(model, strategy="step_by_step", max_epochs=3, batch_size=32,
                          eval_batch_size=64, progress=False)
        calls = {"downstream": 0}
        upstream = model.upstream

        def counted(*args):
            if trainer.balancer is not None and trainer.balancer.tasks == ("event",):
                calls["downstream"] += 1
            return upstream(*args)

        monkeypatch.setattr(model, "upstream", counted)
        if not cached:
            monkeypatch.setattr(trainer, "_frozen_data", lambda *args: None)
        history = trainer.fit(train, val)
        return history, calls["downstream"], _state(model)

    cached, calls_cached, state_cached = fit(True)
    batchwise, calls_batchwise, state_batchwise = fit(False)
    assert calls_cached == 3 + 1  # train: 150 events / 64, val: 50 / 64, once for the phase
    assert calls_batchwise == 3 * (5 + 1)  # every epoch: 5 training batches + validation
    assert len(cached.epochs) == len(batchwise.epochs) == 6
    for row, reference in zip(cached.epochs, batchwise.epochs):
        assert row.keys() == reference.keys()
        for key, value in row.items():
            if isinstance(value, str):
                assert value == reference[key]
            elif key != "seconds":
                assert value == pytest.approx(reference[key], rel=1e-5, nan_ok=True), (row, key)
    for name, tensor in state_cached.items():
        torch.testing.assert_close(tensor, state_batchwise[name], rtol=1e-4, atol=1e-6)


def test_frozen_upstream_gets_no_gradient():
    data = toy_dataset(30, seed=1)
    model = MultiStep(8, 4, seed=0)
    trainer = Trainer(model, strategy="step_by_step", progress=False)
    phase = trainer.phases[1]
    trainer.start_phase(phase)
    # the public step API (benchmarks): training mode, the frozen upstream model in eval mode
    assert model.event.training and not model.tau.training and not model.aux.training
    out = trainer.forward_batch(phase, data)
    losses = trainer.batch_losses(phase, out, data)
    assert list(losses) == ["event"]
    trainer.balancer.combine(losses).backward()
    assert all(p.grad is None for p in model.tau.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.event.parameters())


@pytest.mark.parametrize("connection,k", [("direct", 1), ("additional", 3)])
def test_w1_zero_trains_the_upstream_only_through_the_event_loss(connection, k):
    data = toy_dataset(30, seed=1)
    model = MultiStep(8, 4, connection=connection, k=k, seed=0)
    trainer = Trainer(model, strategy="w1_zero", progress=False)
    phase = trainer.phases[0]
    trainer.start_phase(phase)
    assert trainer.balancer.weights() == {"tau": 0.0, "event": 1.0}
    out = trainer.forward_batch(phase, data)
    trainer.balancer.combine(trainer.batch_losses(phase, out, data)).backward()
    assert sum(p.grad.abs().sum() for p in model.tau.parameters()) > 0
    if connection == "additional":  # the auxiliary head only sees the (zero-weighted) tau loss
        assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.aux.parameters())


def test_pretrain_truth_feeds_labels_then_reconnects():
    train, val = toy_dataset(100, seed=1), toy_dataset(40, seed=2)
    model = MultiStep(8, 4, seed=0)
    history = Trainer(model, strategy="pretrain_truth", max_epochs=1, batch_size=50,
                      progress=False).fit(train, val)
    phases = [r["phase"] for r in history.epochs]
    assert phases == ["pretrain_upstream", "pretrain_downstream", "reoptimise"]
    rows = {r["phase"]: r for r in history.epochs}
    assert math.isnan(rows["pretrain_upstream"]["val_auc_event"])  # event model not run
    assert math.isnan(rows["pretrain_downstream"]["val_auc_tau"])  # tau model not run
    assert set(history.weight_tasks["reoptimise"]) == {"tau", "event"}


@pytest.mark.parametrize(
    "strategy,balancer",
    [("simultaneous", b) for b in ("fixed", "uncertainty", "gradnorm", "dwa")]
    + [("w1_zero", "fixed")],  # w1_zero fixes the weights itself
)
def test_every_strategy_and_balancer_runs(strategy, balancer):
    train, val = toy_dataset(60, seed=1), toy_dataset(30, seed=2)
    model = MultiStep(8, 4, connection="additional", k=2, regression_outputs=3, seed=0)
    history = Trainer(model, strategy=strategy, balancer=balancer, max_epochs=3, batch_size=20,
                      upstream_loss="mse", progress=False).fit(train, val)
    assert len(history.epochs) == 3
    for row in history.epochs:
        assert math.isfinite(row["val_loss"]) and math.isfinite(row["train_momentum"])
    # weights logged every step: 3 batches per epoch
    assert len(history.step_weights["joint"]) == 9
    assert history.weight_tasks["joint"] == ["tau", "momentum", "event"]


# ------------------------------------------------------------------------------------------------
# Early stopping, determinism, checkpoints, logs
# ------------------------------------------------------------------------------------------------
def test_early_stopping_counts_patience_and_keeps_the_best():
    stopper = EarlyStopping(patience=2)
    assert stopper.update(1.0, 0, {"w": 1})
    assert stopper.update(0.5, 1, {"w": 2})
    assert not stopper.update(0.5, 2, {"w": 3})  # not strictly better
    assert not stopper.should_stop
    assert not stopper.update(0.7, 3, {"w": 4})
    assert stopper.should_stop
    assert stopper.best_epoch == 1 and stopper.best_state == {"w": 2}


def test_trainer_restores_the_best_weights():
    train, val = toy_dataset(150, seed=1), toy_dataset(50, seed=2)
    model = MultiStep(8, 4, seed=0)
    trainer = Trainer(model, max_epochs=6, patience=2, batch_size=30, lr=3e-2, progress=False)
    history = trainer.fit(train, val)
    best = history.best["joint"]
    values = [r["val_loss"] for r in history.epochs]
    assert best["value"] == min(values) and best["epoch"] == values.index(min(values))
    result = trainer.evaluate(val)
    assert result["loss_tau"] + result["loss_event"] == pytest.approx(best["value"], rel=1e-5)


def _fit(tmp_path=None, stop_after=None, resume=False, model_seed=0, **config):
    train, val = toy_dataset(90, seed=11), toy_dataset(30, seed=12)
    model = MultiStep(8, 4, connection="additional", k=2, regression_outputs=3,
                      seed=model_seed)
    options = dict(max_epochs=4, batch_size=16, progress=False, seed=5)
    options.update(config)
    if tmp_path is not None:
        options["checkpoint_dir"] = str(tmp_path)
    trainer = Trainer(model, **options)
    history = trainer.fit(train, val, resume_from=tmp_path if resume else None,
                          stop_after=stop_after)
    return model, trainer, history


@pytest.mark.parametrize(
    "config",
    [
        dict(balancer="uncertainty"),
        dict(balancer="gradnorm"),
        dict(balancer="dwa"),
        dict(strategy="step_by_step", max_epochs=2),  # the interruption falls in phase 2
    ],
    ids=["uncertainty", "gradnorm", "dwa", "step_by_step"],
)

def test_resume_equals_uninterrupted_training(tmp_path, config):
    reference, _, ref_history = _fit(**config)
    _, _, partial = _fit(tmp_path, stop_after=3, **config)
    assert partial.interrupted
    # resume into a model with *different* initial weights: everything comes from the checkpoint
    resumed, trainer, history = _fit(tmp_path, resume=True, model_seed=99, **config)
    assert not history.interrupted
    assert _equal_states(_state(reference), _state(resumed))
    assert _equal_states(_state(trainer.balancer), _state(_fit(**config)[1].balancer))
    assert [r["val_loss"] for r in history.epochs] == [r["val_loss"] for r in ref_history.epochs]
    assert history.step_weights == ref_history.step_weights


def test_same_seed_same_weights_and_other_seed_differs():
    a, _, _ = _fit(balancer="uncertainty")
    b, _, _ = _fit(balancer="uncertainty")
    c, _, _ = _fit(balancer="uncertainty", seed=6)  # other shuffles
    assert _equal_states(_state(a), _state(b))
    assert not _equal_states(_state(a), _state(c))


def test_logs_csv_and_json(tmp_path):
    train, val = toy_dataset(60, seed=1), toy_dataset(30, seed=2)
    model = MultiStep(8, 4, seed=0)
    Trainer(model, balancer="uncertainty", max_epochs=2, batch_size=30, progress=False,
            log_dir=str(tmp_path)).fit(train, val)
    with open(tmp_path / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2
    for column in ("train_loss", "train_tau", "train_event", "val_loss", "val_tau", "val_event",
                   "val_auc_tau", "val_auc_event", "weight_tau", "weight_event"):
        assert column in rows[0]
        float(rows[0][column])
    payload = json.loads((tmp_path / "metrics.json").read_text())
    assert payload["config"]["balancer"] == "uncertainty"
    assert len(payload["epochs"]) == 2
    assert len(payload["step_weights"]["joint"]) == 4  # 2 epochs x 2 batches


def test_progress_bar_can_be_silenced(capsys):
    train, val = toy_dataset(40, seed=1), toy_dataset(20, seed=2)
    Trainer(MultiStep(8, 4, seed=0), max_epochs=1, progress=False).fit(train, val)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    Trainer(MultiStep(8, 4, seed=0), max_epochs=1, progress=True).fit(train, val)
    assert "joint 0" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# Precision: bfloat16 mixed precision (trainer.precision)
# ------------------------------------------------------------------------------------------------
def test_bad_precision_is_rejected():
    with pytest.raises(ValueError, match=r"unknown precision 'float16'; choose from \('float32', 'bfloat16'\)"):
        TrainConfig(precision="float16")


@pytest.mark.parametrize("balancer", ["fixed", "gradnorm"])
def test_bfloat16_trains_in_mixed_precision_and_converges_like_float32(balancer):
    train = toy_dataset(300, seed=1, signal_strength=1.5)
    val = toy_dataset(100, seed=2, signal_strength=1.5)
    runs = {}
    for precision in ("float32", "bfloat16"):
        model = MultiStep(8, 4, seed=0)
        seen: dict[bool, set] = {True: set(), False: set()}  # training mode -> output dtypes
        first = model.tau.deepsets.phi[0]
        first.register_forward_hook(lambda m, args, out: seen[m.training].add(out.dtype))
        trainer = Trainer(model, max_epochs=6, batch_size=50, lr=3e-3, progress=False,
                          balancer=balancer, precision=precision)
        history = trainer.fit(train, val)
        runs[precision] = history.epochs
        if precision == "bfloat16":
            # the training steps' forward passes in bfloat16, validation in float32; the weights
            # (and Adam's moments) stay float32
            assert seen == {True: {torch.bfloat16}, False: {torch.float32}}
            assert all(p.dtype == torch.float32 for p in model.parameters())
            assert all(v.dtype == torch.float32 for state in trainer.optimizer.state.values()
                       for k, v in state.items() if k != "step")
        else:
            assert seen == {True: {torch.float32}, False: {torch.float32}}
        losses = [r["train_loss"] for r in history.epochs]
        assert losses[-1] < 0.5 * losses[0], (precision, losses)
    # The same training up to bfloat16 rounding (loose: rounding differences grow along a
    # trajectory; float32 reaches train loss 0.43, AUCs 1.0 (tau) and 0.93 (event) here).
    fp32, bf16 = runs["float32"][-1], runs["bfloat16"][-1]
    assert bf16["train_loss"] == pytest.approx(fp32["train_loss"], rel=0.15)
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.15)
    for key in ("val_auc_tau", "val_auc_event"):
        assert bf16[key] == pytest.approx(fp32[key], abs=0.03), key


def test_checkpoint_of_another_precision_is_not_resumed(tmp_path):
    from hepms.train.trainer import CheckpointError

    _fit(tmp_path, stop_after=1)
    with pytest.raises(CheckpointError, match="made with precision='float32', this trainer has 'bfloat16'"):
        _fit(tmp_path, resume=True, precision="bfloat16")
    # A checkpoint written before the option existed (no "precision" in its config) was float32.
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    del state["config"]["precision"]
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="made with precision='float32'"):
        _fit(tmp_path, resume=True, precision="bfloat16")
    _, _, history = _fit(tmp_path, resume=True)
    assert not history.interrupted and len(history.epochs) == 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cuda_training_runs_on_the_gpu(precision):
    train, val = toy_dataset(60, seed=1), toy_dataset(30, seed=2)
    model = MultiStep(8, 4, seed=0)
    trainer = Trainer(model, max_epochs=2, batch_size=20, progress=False, device="cuda",
                      precision=precision)
    history = trainer.fit(train, val)
    assert math.isfinite(history.epochs[-1]["val_loss"])
    assert next(model.parameters()).device.type == "cuda"
    assert trainer.predict(val)["event_logit"].shape == (30,)


# ------------------------------------------------------------------------------------------------
# A short training on generated events
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    pytest.importorskip("pythia8mc")
    pytest.importorskip("fastjet")
    from hepms.generate.io import read_events
    from hepms.generate.pipeline import generate

    folder = tmp_path_factory.mktemp("generated")
    generate(folder, events_per_process=300, mu=5, seed=3, workers=1, progress=False,
             pileup_pool=300, block_size=300)
    return read_events(folder, max_jets=8, max_constituents=50)


@pytest.mark.slow
def test_short_training_learns_both_tasks(generated, tmp_path):
    from hepms import data as hdata
    from hepms import metrics

    train, val, test, _ = hdata.prepare(generated, seed=1)
    model = MultiStep(train.constituents.num_features, train.jet_features.shape[1], seed=1)
    trainer = Trainer(model, max_epochs=12, batch_size=32, progress=False, seed=1,
                      log_dir=str(tmp_path))
    before = trainer.evaluate(val)
    history = trainer.fit(train, val)
    after = trainer.evaluate(val)
    print(f"validation AUC before/after: tau {before['auc_tau']:.3f} -> {after['auc_tau']:.3f}, "
          f"event {before['auc_event']:.3f} -> {after['auc_event']:.3f}")
    # Thresholds: on this validation set (91 events, 181 jets) the best single jet variable
    # reaches a tau AUC of ~0.81 (jet mass) and an event AUC of ~0.76 (leading-jet pT); the
    # untrained model sits at 0.36-0.56. After 12 epochs, model seeds 1-5 reach tau AUCs of
    # 0.917-0.931 and event AUCs of 0.706-0.770. So > 0.88 needs the constituents (beyond any
    # jet variable), > 0.65 a real event-level separation, each with a margin of several
    # seed-to-seed spreads.
    assert after["auc_tau"] > 0.88, after
    assert after["auc_event"] > 0.65, after
    assert after["auc_tau"] > before["auc_tau"] + 0.2
    assert after["auc_event"] > before["auc_event"] + 0.05
    assert after["loss_tau"] < before["loss_tau"] and after["loss_event"] < before["loss_event"]
    # the AUCs logged per epoch are the ones of the restored best epoch
    best = history.epochs[history.best["joint"]["epoch"]]
    assert best["val_auc_tau"] == pytest.approx(after["auc_tau"], abs=1e-6)
    assert best["val_auc_event"] == pytest.approx(after["auc_event"], abs=1e-6)
    assert metrics.background_rejection(val.jet_labels, trainer.predict(val)["tau_logit"]) > 2.0
