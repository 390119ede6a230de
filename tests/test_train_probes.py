"""Probes during training: recorded over steps, checked against brute-force references on the
kept checkpoints, serialized with the history, resumable, and invisible to the training itself."""
import math
import re

import numpy as np
import pytest
import torch

import normlens.train as train_module
from normlens import sites as S
from normlens.data import eval_windows, token_windows
from normlens.io import as_json_value
from normlens.models import build_model
from normlens.probes import ActivationStatsProbe, count_hooks
from normlens.models.checkpoint import load_checkpoint, model_tensors
from normlens.train import TrainConfig, checkpoint_path, load_train_result, train
from normlens.train_probes import (GradientNormProbe, Measurement, ResultProbe, TrainingProbe,
                                   attention_entropy_probe, default_training_probes, residual_variance_probe)
from normlens.train_state import TrainStateError

SMALL = dict(n_layers=2, d_model=16, n_heads=2, n_ctx=16)
CONFIG = TrainConfig(steps=12, eval_every=4, checkpoint_every=4, eval_seqs=8)
EVERY, PROBE_SEQS = 4, 6


def run(splits, folder=None, probes=None, **kwargs):
    torch.manual_seed(0)
    model = build_model(**SMALL)
    probes = default_training_probes() if probes is None else probes
    result = train(model, splits, CONFIG, probes=probes, every=EVERY, probe_seqs=PROBE_SEQS,
                   checkpoint_dir=folder, progress=False, **kwargs)
    return model, result


@pytest.fixture(scope="module")
def probed(embedded_splits, tmp_path_factory):
    folder = tmp_path_factory.mktemp("probed")
    model, result = run(embedded_splits, folder, keep_checkpoints=[0, 4, 12])
    return folder, model, result


def test_probes_do_not_change_training(embedded_splits, probed):
    _, model, result = probed
    plain_model, plain = run(embedded_splits, probes=[])
    for name, tensor in model_tensors(plain_model).items():
        assert torch.equal(tensor, model_tensors(model)[name]), name
    assert result.train_loss == plain.train_loss and result.val_loss == plain.val_loss


def test_records_are_taken_every_n_steps(probed):
    _, _, result = probed
    assert result.probes["attention"]["steps"] == [0, 4, 8, 12]  # held-out: the final model too
    assert result.probes["residual"]["steps"] == [0, 4, 8, 12]
    assert result.probes["grad_norm"]["steps"] == [0, 4, 8]  # the gradient of the step taken there
    steps, entropy = result.probe_series("attention", "entropy[layer,head]")
    assert entropy.shape == (4, 2, 2) and list(steps) == [0, 4, 8, 12]
    assert result.probes["attention"]["axes"]["entropy[layer,head]"] == [[0, 1], [0, 1]]


def reference_entropy_and_variance(model, tokens):
    """Brute force from TransformerLens's stored attention patterns and residual streams, float64."""
    model.eval()
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens)
    entropy = np.zeros((SMALL["n_layers"], SMALL["n_heads"]))
    for layer in range(SMALL["n_layers"]):
        p = cache[S.attn_pattern(layer)].double()  # (batch, head, query, key)
        h = -torch.special.xlogy(p, p).sum(-1)  # (batch, head, query)
        entropy[layer] = h.mean(dim=(0, 2)).numpy()
    variance = [cache[site][:, 1:].double().var(unbiased=False).item() for site in S.residual_sites(SMALL["n_layers"])]
    return entropy, np.array(variance)


@pytest.mark.parametrize("index, step", [(0, 0), (1, 4), (3, 12)])
def test_recorded_entropy_and_variance_match_brute_force_on_kept_checkpoints(probed, embedded_splits, index, step):
    folder, _, result = probed
    model = load_checkpoint(checkpoint_path(folder, step))
    tokens = eval_windows(embedded_splits, n_seq=CONFIG.eval_seqs, n_ctx=SMALL["n_ctx"],
                          seed=CONFIG.eval_seed)[:PROBE_SEQS]
    entropy, variance = reference_entropy_and_variance(model, tokens)
    _, recorded = result.probe_series("attention", "entropy[layer,head]")
    np.testing.assert_allclose(recorded[index], entropy, rtol=1e-5, atol=1e-6)
    _, recorded = result.probe_series("residual", "variance[site]")
    np.testing.assert_allclose(recorded[index], variance, rtol=1e-4)
    assert result.probes["residual"]["axes"]["variance[site]"] == [S.residual_sites(SMALL["n_layers"])]


def test_gradient_norms_match_a_replayed_first_step(probed, embedded_splits):
    _, _, result = probed
    torch.manual_seed(0)
    model = build_model(**SMALL)
    batch = token_windows(embedded_splits.train, n_seq=CONFIG.batch_size, n_ctx=SMALL["n_ctx"],
                          generator=torch.Generator().manual_seed(CONFIG.seed))
    from normlens.losses import next_token_loss

    next_token_loss(model, batch).backward()
    per_layer = np.zeros(SMALL["n_layers"])
    total = 0.0
    for name, param in model.named_parameters():
        square = param.grad.double().pow(2).sum().item()
        total += square
        match = re.match(r"(?:blocks|layers)\.(\d+)\.", name)
        if match:
            per_layer[int(match.group(1))] += square
    _, recorded = result.probe_series("grad_norm", "norm[layer]")
    np.testing.assert_allclose(recorded[0], np.sqrt(per_layer), rtol=1e-6)
    _, recorded_total = result.probe_series("grad_norm", "total")
    assert recorded_total[0] == pytest.approx(math.sqrt(total), rel=1e-6)
    assert result.grad_norm[0] == pytest.approx(math.sqrt(total), rel=1e-5)  # the loop's own pre-clip norm
    groups = result.probes["grad_norm"]["axes"]["norm[group]"][0]
    _, by_group = result.probe_series("grad_norm", "norm[group]")
    assert {"attn", "mlp"} <= set(groups)
    assert np.sqrt((by_group[0] ** 2).sum()) == pytest.approx(math.sqrt(total), rel=1e-6)


def test_kept_checkpoints_are_the_model_at_those_steps(probed):
    folder, model, result = probed
    assert result.checkpoint_steps == [0, 4, 12]
    torch.manual_seed(0)
    init = build_model(**SMALL)
    for saved, fresh in ((load_checkpoint(checkpoint_path(folder, 0)), init),
                         (load_checkpoint(checkpoint_path(folder, 12)), model)):
        for name, tensor in model_tensors(fresh).items():
            assert torch.equal(model_tensors(saved)[name], tensor), name


def test_history_with_probes_round_trips_through_json(probed):
    folder, _, result = probed
    loaded = load_train_result(folder / "train_result.json")
    assert as_json_value(loaded.probes) == as_json_value(result.probes)
    frame = loaded.probe_frame("attention")
    assert {"step", "metric", "layer", "head", "value"} <= set(frame.columns)
    per_head = frame[(frame.metric == "entropy") & (frame.step == 4)].set_index(["layer", "head"]).value
    _, entropy = result.probe_series("attention", "entropy[layer,head]")
    assert per_head[(1, 0)] == pytest.approx(entropy[1, 1, 0])


class Killed(BaseException):
    pass


def test_interrupted_run_with_probes_resumes_to_the_same_history(probed, embedded_splits, tmp_path, monkeypatch):
    real = train_module.token_windows
    calls = {"n": 0}

    def die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 10:  # after the step-8 commit, before the end
            raise Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "token_windows", die)
    with pytest.raises(Killed):
        run(embedded_splits, tmp_path, keep_checkpoints=[0, 4, 12])
    monkeypatch.setattr(train_module, "token_windows", real)
    _, resumed = run(embedded_splits, tmp_path, keep_checkpoints=[0, 4, 12])
    _, _, reference = probed
    assert as_json_value(resumed.probes) == as_json_value(reference.probes)
    assert resumed.checkpoint_steps == [0, 4, 12]


def test_resume_with_other_probes_is_refused(embedded_splits, tmp_path):
    real = train_module.token_windows
    calls = {"n": 0}

    def die(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 6:
            raise Killed
        return real(*args, **kwargs)

    train_module.token_windows = die
    try:
        with pytest.raises(Killed):
            run(embedded_splits, tmp_path)
    finally:
        train_module.token_windows = real
    with pytest.raises(TrainStateError, match="other training probes"):
        run(embedded_splits, tmp_path, probes=[GradientNormProbe()])


class ConstantProbe(TrainingProbe):
    """A user's own probe: follows the protocol with a labelled array."""

    name = "mine"

    def measure(self, model, tokens):
        return Measurement({"n_tokens": tokens.numel(), "ones[kind]": [1.0, 1.0]}, {"ones[kind]": [["a", "b"]]})


def test_a_custom_probe_follows_the_protocol(embedded_splits):
    _, result = run(embedded_splits, probes=[ConstantProbe()])
    steps, values = result.probe_series("mine", "n_tokens")
    assert list(steps) == [0, 4, 8, 12] and set(values) == {PROBE_SEQS * SMALL["n_ctx"]}
    frame = result.probe_frame("mine")
    assert set(frame[frame.metric == "ones"].kind) == {"a", "b"}


def test_measurement_rejects_mislabelled_arrays():
    with pytest.raises(ValueError, match="names 2 axes"):
        Measurement({"x[layer,head]": [1.0, 2.0]})
    with pytest.raises(ValueError, match="labels of lengths"):
        Measurement({"x[layer]": [1.0, 2.0]}, {"x[layer]": [[0, 1, 2]]})


def test_held_out_probe_leaves_the_model_as_found():
    model = build_model(**SMALL)
    model.train()
    before = {k: v.clone() for k, v in model_tensors(model).items()}
    tokens = torch.randint(0, 256, (3, SMALL["n_ctx"]))
    with torch.no_grad():
        model(tokens)  # TransformerLens wires its own capture hooks on the first forward
    rng, n_hooks = torch.get_rng_state(), count_hooks(model)
    for probe in (attention_entropy_probe(), residual_variance_probe(),
                  ResultProbe(ActivationStatsProbe(), frame={"variance": ("site",)})):
        probe.measure(model, tokens)
    assert model.training and torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(before[k], v) for k, v in model_tensors(model).items())
    assert count_hooks(model) == n_hooks
