"""run_probe_suite: one pass over the tokens, linear probes as collected alone, eval mode, flags restored."""
import pandas as pd
import torch

from normlens.probes.linear import collect_activations, default_probe_sites, score_linear_probes
from normlens.probes.suite import run_probe_suite


def test_suite_reads_the_tokens_once_and_leaves_each_flag(model64):
    tokens = torch.randint(0, 256, (8, 12), generator=torch.Generator().manual_seed(4))
    modules = list(model64.modules())
    for i, module in enumerate(modules):
        module.training = i % 4 == 1  # mixed: some modules train, the root does not
    flags = [m.training for m in modules]
    calls = []
    handle = model64.register_forward_pre_hook(
        lambda m, args: calls.append((args[0].shape[0], any(x.training for x in model64.modules()))))
    state = torch.random.get_rng_state()
    try:
        out = run_probe_suite(model64, tokens, batch_size=8, s_curve_samples=16, probe_bytes=1 << 14)
    finally:
        handle.remove()
        after = [m.training for m in modules]
        model64.eval()
    assert after == flags
    assert torch.equal(torch.random.get_rng_state(), state)
    assert not any(training for _, training in calls)  # every forward in eval mode
    assert sum(n == 8 for n, _ in calls) == 1  # the whole token set is read once (was twice)
    sites = default_probe_sites(model64)
    acts, idx = collect_activations(model64, tokens, sites, 1 << 14, 0)
    want = pd.concat([score_linear_probes(acts, idx, tokens, label, sites=sites, kind="ridge").frame
                      for label in ("token", "position")], ignore_index=True)
    pd.testing.assert_frame_equal(out.linear.frame, want)
