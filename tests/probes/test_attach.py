import pytest
import torch
import torch.nn as nn

from normlens import sites as S
from normlens.probes.attach import ProbeError, attach, count_hooks
from normlens.probes.stats import ActivationStatsProbe


def test_detach_leaves_no_hook_and_model_unchanged(model64, tokens):
    before = count_hooks(model64)
    with torch.no_grad():
        ref = model64(tokens)
    with attach(model64, ActivationStatsProbe()) as att:
        assert count_hooks(model64) > before
        with torch.no_grad():
            out = model64(tokens)
    assert not att.attached
    assert count_hooks(model64) == before
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # probes observe, never change


def test_same_probe_twice_is_refused(model64):
    probe = ActivationStatsProbe()
    with attach(model64, probe):
        with pytest.raises(ProbeError, match="already attached"):
            attach(model64, probe)
    with pytest.raises(ProbeError, match="already attached"):
        attach(model64, [probe, probe])
    attach(model64, probe).detach()  # fine again after detaching


def test_unknown_name_lists_closest(model64):
    with pytest.raises(ProbeError, match="blocks.0.hook_resid_pre"):
        attach(model64, ActivationStatsProbe(sites=["blocks.0.hook_resid_pree"]))


def test_glob_patterns_and_aliases(model64, tokens):
    probe = ActivationStatsProbe(sites=["blocks.*.hook_resid_pre", "blocks.0.hook_in"])
    before = count_hooks(model64)  # the model's own hooks
    with attach(model64, probe):
        added = count_hooks(model64) - before
        model64(tokens)
    assert probe.sites == [S.resid_pre(0), S.resid_pre(1), "blocks.0.hook_in"]
    frame = probe.result().to_frame()
    assert frame[frame.site == "blocks.0.hook_in"].n_tokens.sum() == tokens.numel()
    with attach(model64, ActivationStatsProbe(sites=[S.resid_pre(1)])):
        added_one = count_hooks(model64) - before
    # blocks.0.hook_in is hook_resid_pre's HookPoint: the aliased pair adds exactly one hook
    assert added == added_one + 1


def test_plain_module():
    net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2))
    probe = ActivationStatsProbe(split_first=False)
    x = torch.randn(5, 4)
    with attach(net, probe):
        net(x)
    assert probe.sites == ["1.hook_in", "1.hook_out"]
    stats = probe.result().get("1.hook_in").channel
    torch.testing.assert_close(stats.mean, net[0](x).detach().double().mean(0))
    relu = ActivationStatsProbe(sites=["2.hook_out"], split_first=False)
    with attach(net, relu):
        net(x)
    h = torch.relu(net[1](net[0](x)))
    assert relu.result().to_frame().zero_fraction[0] == pytest.approx(float((h == 0).double().mean()))
    with pytest.raises(ProbeError, match="1.hook_out"):
        attach(net, ActivationStatsProbe(sites=["1.hook_outt"]))


def test_plain_module_with_dyt_counts_it_as_a_norm():
    """The one norm predicate (normlens.sites.is_norm_module) covers DyT on plain modules too."""
    from normlens.models import DyT

    net = nn.Sequential(nn.Linear(4, 8), DyT(8), nn.Linear(8, 2))
    probe = ActivationStatsProbe(split_first=False)
    with attach(net, probe):
        net(torch.randn(5, 4))
    assert probe.sites == ["1.hook_in", "1.hook_out"]
