"""hepms.nn: jagged DeepSets and the multi-step model against the padded reference, gradients
through the connection, TorchScript / torch.compile, configuration errors."""
from __future__ import annotations

import warnings

import pytest
import torch

import hepms
from hepms.data import toy_dataset
from hepms.nn import DeepSets, EventClassifier, MultiStep, Pooling, TauID, run
from hepms._padded_reference import PaddedBatch, deepsets_padded, multistep_padded, pad


pytestmark = pytest.mark.usefixtures("one_thread")

TIGHT = dict(rtol=1e-12, atol=1e-12)


def _sets(seed: int = 0, features: int = 5, dtype=torch.float64):
    """Random sets including empty ones (first, middle and last)."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.tensor([0, 3, 1, 0, 7, 2, 5, 0])
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64)
    torch.cumsum(counts, 0, out=offsets[1:])
    values = torch.randn(int(offsets[-1]), features, generator=g, dtype=dtype)
    return values, offsets


def _param_grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {
        name: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for name, p in module.named_parameters()
    }


# ------------------------------------------------------------------------------------------------
# DeepSets: jagged == padded
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", [("sum",), ("mean",), ("max",), ("sum", "mean", "max"), ("attention", "max")])
@pytest.mark.parametrize("blocks", [0, 2])
def test_deepsets_matches_padded_outputs_and_gradients(pool, blocks):
    torch.manual_seed(0)
    values, offsets = _sets()
    globals_ = torch.randn(offsets.numel() - 1, 3, dtype=torch.float64)
    ds = DeepSets(5, phi=(16, 16), blocks=blocks, pool=pool, post_pool=(6,), set_features=3,
                  rho=(8, 2)).double()

    values_j = values.clone().requires_grad_(True)
    globals_j = globals_.clone().requires_grad_(True)
    out_j = ds(values_j, offsets, globals_j)
    weight = torch.randn_like(out_j)
    (out_j * weight).sum().backward()
    grads_j = _param_grads(ds)
    ds.zero_grad()

    padded, mask = pad(values, offsets)
    padded = padded.clone().requires_grad_(True)
    globals_p = globals_.clone().requires_grad_(True)
    out_p = deepsets_padded(ds, padded, mask, globals_p)
    (out_p * weight).sum().backward()
    grads_p = _param_grads(ds)

    torch.testing.assert_close(out_j, out_p, **TIGHT)
    assert grads_j.keys() == grads_p.keys()
    for name in grads_j:
        torch.testing.assert_close(grads_j[name], grads_p[name], **TIGHT, msg=name)
    torch.testing.assert_close(values_j.grad, padded.grad[mask], **TIGHT)
    torch.testing.assert_close(globals_j.grad, globals_p.grad, **TIGHT)
    assert torch.count_nonzero(padded.grad[~mask]) == 0  # padding gets no gradient


def test_deepsets_is_permutation_invariant_within_sets():
    torch.manual_seed(1)
    values, offsets = _sets()
    ds = DeepSets(5, pool=("sum", "max"), rho=(4,)).double()
    # Reverse the order of the elements inside every set.
    ids = torch.repeat_interleave(torch.arange(offsets.numel() - 1), offsets.diff())
    position = torch.arange(values.shape[0]) - offsets[ids]
    reversed_index = offsets[ids + 1] - 1 - position
    torch.testing.assert_close(ds(values, offsets), ds(values[reversed_index], offsets), **TIGHT)


def test_empty_sets_give_the_rho_of_zero_pooling():
    ds = DeepSets(2, phi=(4,), blocks=1, pool=("mean", "max"), rho=(3,)).double()
    values = torch.randn(2, 2, dtype=torch.float64)
    out = ds(values, torch.tensor([0, 0, 2, 2]))
    zeros = torch.zeros(1, ds.rho[0].in_features, dtype=torch.float64)
    torch.testing.assert_close(out[0], ds.rho(zeros)[0], **TIGHT)
    torch.testing.assert_close(out[2], ds.rho(zeros)[0], **TIGHT)


# ------------------------------------------------------------------------------------------------
# MultiStep: jagged == padded, same parameter names
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connection,k", [("direct", 1), ("additional", 3)])
def test_multistep_matches_padded_reference(connection, k):
    data = toy_dataset(40, seed=3, mean_jets=3, mean_constituents=6, max_constituents=20,
                       dtype=torch.float64)
    model = MultiStep(8, 4, connection=connection, k=k, regression_outputs=3, seed=5).double()

    out = run(model, data)
    loss = out.tau_logit.sum() + out.event_logit.pow(2).sum() + out.momentum.sum()
    loss.backward()
    grads_j = _param_grads(model)
    model.zero_grad()

    batch = PaddedBatch.from_data(data, max_jets=8, max_constituents=20)
    ref = multistep_padded(model, batch)
    mask = batch.jet_mask
    loss_p = (ref.tau_logit[mask].sum() + ref.event_logit.pow(2).sum()
              + ref.momentum[mask].sum())
    loss_p.backward()
    grads_p = _param_grads(model)

    torch.testing.assert_close(out.tau_logit, ref.tau_logit[mask], **TIGHT)
    torch.testing.assert_close(out.intermediate, ref.intermediate[mask], **TIGHT)
    torch.testing.assert_close(out.event_logit, ref.event_logit, **TIGHT)
    torch.testing.assert_close(out.momentum, ref.momentum[mask], **TIGHT)
    assert list(grads_j) == list(grads_p)
    for name in grads_j:
        torch.testing.assert_close(grads_j[name], grads_p[name], **TIGHT, msg=name)


def test_padded_batch_round_trip():
    data = toy_dataset(10, seed=2, mean_jets=3, mean_constituents=4, max_constituents=10,
                       dtype=torch.float64)
    batch = PaddedBatch.from_data(data, max_jets=8, max_constituents=10)
    assert batch.constituents.shape[:3] == (10, 8, 10)
    assert int(batch.jet_mask.sum()) == data.num_jets
    assert int(batch.constituent_mask.sum()) == data.num_constituents
    torch.testing.assert_close(batch.constituents[batch.constituent_mask], data.constituents.values)
    torch.testing.assert_close(batch.jet_labels[batch.jet_mask], data.jet_labels)
    torch.testing.assert_close(batch.jet_features[batch.jet_mask], data.jet_features)
    with pytest.raises(ValueError, match="max_len"):
        PaddedBatch.from_data(data, max_jets=8, max_constituents=2)


# ------------------------------------------------------------------------------------------------
# Gradient flow through the connection
# ------------------------------------------------------------------------------------------------
def _grad_norm(params) -> float:
    return float(sum(p.grad.abs().sum() for p in params if p.grad is not None))


@pytest.mark.parametrize("connection,k", [("direct", 1), ("additional", 4)])
def test_event_loss_reaches_the_upstream_model(connection, k):
    data = toy_dataset(30, seed=1)
    model = MultiStep(8, 4, connection=connection, k=k, seed=0)
    out = run(model, data)
    out.event_logit.sum().backward()
    assert _grad_norm(model.tau.parameters()) > 0  # through the intermediate output
    assert _grad_norm(model.event.parameters()) > 0
    # the auxiliary network only serves the tau loss
    assert _grad_norm(model.aux.parameters()) == 0


@pytest.mark.parametrize("connection,k", [("direct", 1), ("additional", 4)])
def test_tau_loss_does_not_reach_the_event_model(connection, k):
    data = toy_dataset(30, seed=1)
    model = MultiStep(8, 4, connection=connection, k=k, seed=0)
    out = run(model, data)
    out.tau_logit.sum().backward()
    assert _grad_norm(model.tau.parameters()) > 0
    assert _grad_norm(model.event.parameters()) == 0
    if connection == "additional":
        assert _grad_norm(model.aux.parameters()) > 0


def test_truth_intermediate_cuts_the_connection():
    data = toy_dataset(30, seed=1)
    model = MultiStep(8, 4, seed=0)
    out = run(model, data, truth=True)
    torch.testing.assert_close(out.intermediate[:, 0], data.jet_labels)
    out.event_logit.sum().backward()
    assert _grad_norm(model.tau.parameters()) == 0
    assert _grad_norm(model.event.parameters()) > 0
    with pytest.raises(ValueError, match="truth"):
        MultiStep(8, 4, connection="additional", k=2).truth_intermediate(data.jet_labels)


def test_direct_connection_feeds_the_tau_probability():
    data = toy_dataset(20, seed=4)
    model = MultiStep(8, 4, seed=0)
    out = run(model, data)
    torch.testing.assert_close(out.intermediate[:, 0], torch.sigmoid(out.tau_logit))
    manual = model.downstream(data.jet_features, data.jet_offsets,
                              torch.sigmoid(out.tau_logit)[:, None])
    torch.testing.assert_close(out.event_logit, manual)


def test_shared_layer_produces_the_intermediate():
    model = MultiStep(8, 4, connection="additional", k=5, seed=0)
    assert model.shared_layer().out_features == 5
    assert model.shared_layer() is model.tau.head[-1]


# ------------------------------------------------------------------------------------------------
# Default sizes (the study's slides)
# ------------------------------------------------------------------------------------------------
def test_default_layer_sizes_follow_the_slides():
    tau = TauID(8, 4)
    linear = lambda seq: [m.out_features for m in seq if isinstance(m, torch.nn.Linear)]
    assert linear(tau.deepsets.phi) == [32, 32, 32]                  # phi1
    assert len(tau.deepsets.blocks) == 2                             # "x 2"
    assert linear(tau.deepsets.blocks[0].phi_a) == [32]              # phi2, linear
    assert linear(tau.deepsets.blocks[0].phi_b) == [32]              # phi3, linear
    assert not any(isinstance(m, torch.nn.ReLU) for m in tau.deepsets.blocks[0].modules())
    assert linear(tau.deepsets.post_pool) == [24]                    # phi4
    assert linear(tau.deepsets.rho) == [128, 128, 16]                # phi5
    assert linear(tau.head) == [64, 32, 1]                           # phi6
    event = EventClassifier(4, 1)
    assert linear(event.deepsets.phi) == [32, 32, 32]
    assert linear(event.deepsets.rho) == [64, 32, 1]
    assert event.deepsets.phi[0].in_features == 5                    # 4-vector + tau probability


def test_same_seed_same_weights():
    a, b = MultiStep(8, 4, seed=7), MultiStep(8, 4, seed=7)
    c = MultiStep(8, 4, seed=8)
    for (na, pa), (nb, pb), (_, pc) in zip(a.named_parameters(), b.named_parameters(),
                                          c.named_parameters()):
        assert na == nb
        assert torch.equal(pa, pb)
    assert not all(torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    # seeding the model does not disturb the global RNG
    state = torch.get_rng_state()
    MultiStep(8, 4, seed=1)
    assert torch.equal(state, torch.get_rng_state())


# ------------------------------------------------------------------------------------------------
# TorchScript and torch.compile
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connection,k", [("direct", 1), ("additional", 2)])
def test_torchscript_matches_eager(connection, k):
    data = toy_dataset(25, seed=6)
    model = MultiStep(8, 4, connection=connection, k=k, regression_outputs=3, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.script is deprecated upstream, still supported
        scripted = torch.jit.script(model)
    args = (data.constituents.values, data.constituents.offsets, data.jet_offsets,
            data.jet_features)
    expected, got = model(*args), scripted(*args)
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    truth = data.jet_labels[:, None] if connection == "direct" else torch.rand(data.num_jets, k)
    torch.testing.assert_close(scripted(*args, truth).event_logit, model(*args, truth).event_logit)
    with pytest.raises(Exception, match="DeepSets expects values"):
        scripted(data.constituents.values[:, :5], *args[1:])


def test_torch_compile_fullgraph_matches_eager():
    data = toy_dataset(25, seed=6)
    model = MultiStep(8, 4, connection="additional", k=3, seed=0)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=True)
    args = (data.constituents.values, data.constituents.offsets, data.jet_offsets,
            data.jet_features)
    expected = model(*args)
    expected.event_logit.sum().backward()
    grads = _param_grads(model)
    model.zero_grad()
    got = compiled(*args)
    got.event_logit.sum().backward()
    for e, g in zip(expected, got):
        torch.testing.assert_close(g, e)
    for name, g in _param_grads(model).items():
        torch.testing.assert_close(g, grads[name], msg=name)
    # a second batch with other sizes reuses the dynamic graph
    other = data[3:11]
    torch.testing.assert_close(
        compiled(other.constituents.values, other.constituents.offsets, other.jet_offsets,
                 other.jet_features).event_logit,
        run(model, other).event_logit,
    )


# ------------------------------------------------------------------------------------------------
# Configuration errors
# ------------------------------------------------------------------------------------------------
def test_bad_configurations_raise_clear_errors():
    with pytest.raises(ValueError, match="k must be an integer >= 1"):
        MultiStep(8, 4, connection="additional", k=0)
    with pytest.raises(ValueError, match="k must be 1"):
        MultiStep(8, 4, connection="direct", k=3)
    with pytest.raises(ValueError, match="unknown connection"):
        MultiStep(8, 4, connection="telepathy")
    with pytest.raises(ValueError, match="unknown pooling"):
        Pooling(("median",))
    with pytest.raises(ValueError, match="layer sizes"):
        TauID(8, 4, phi=(32, 0))
    with pytest.raises(ValueError, match="activation"):
        DeepSets(3, phi_activation="swish")
    with pytest.raises(ValueError, match="constituent_features"):
        TauID(0, 4)
    with pytest.raises(TypeError):
        MultiStep(8, 4, tau_options={"no_such_option": 1})


def test_wrong_feature_count_raises():
    data = toy_dataset(10, seed=0)
    model = MultiStep(7, 4, seed=0)  # data has 8 constituent features
    with pytest.raises(ValueError, match=r"DeepSets expects values of shape \[N, 7\]"):
        run(model, data)
    model = MultiStep(8, 4, seed=0)
    with pytest.raises(ValueError, match="set_features of shape"):
        model.tau(data.constituents.values, data.constituents.offsets, data.jet_features[:, :3])
    with pytest.raises(ValueError, match="intermediate input must have shape"):
        model.downstream(data.jet_features, data.jet_offsets, torch.zeros(data.num_jets, 2))


def test_bad_offsets_are_caught_by_the_ops():
    ds = DeepSets(2, rho=(1,))
    with pytest.raises(ValueError, match="offsets"):
        ds(torch.randn(3, 2), torch.tensor([0, 2, 1, 3]))
    with hepms.validation(False):  # the hot path skips the content checks
        ds(torch.randn(3, 2), torch.tensor([0, 2, 3]))
