"""Every probe on every model of a set; results saved for the ``probes`` renderer."""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from analyses.common.inputs import ModelSet
from analyses.common.threads import torch_threads
from normlens.hygiene import eval_mode, rng_preserved
from normlens.probes.effectiveness import compute_effectiveness
from normlens.probes.massive import MassiveActivationResult, compute_massive_activations
from normlens.probes.suite import ProbeSuiteResult, run_probe_suite
from normlens.report.manifest import SectionRef
from normlens.report.sections._common import file_stem
from normlens.report.sections.probes import save_probes


@dataclass(frozen=True)
class ProbeSettings:
    """``effectiveness_seqs``: sequences of the angular-distance and skip-loss measurements (their
    bootstrap intervals resample these; the suite alone uses 4); ``massive``: run the
    massive-activation detector (Sun et al. 2024) too; ``n_resamples``: bootstrap resamples of the
    intervals over sequences."""

    n_seq: int = 8  # held-out sequences probed
    s_curve_samples: int = 512
    probe_bytes: int = 1 << 20  # activations kept for the linear probes
    threads: Optional[int] = 1  # tiny tensors: one thread avoids contention on a shared machine
    effectiveness_seqs: int = 8
    massive: bool = True
    n_resamples: int = 1000


def run_probes(models: ModelSet, results: Path, path: str = "probes",
               settings: ProbeSettings = ProbeSettings()) -> SectionRef:
    """Activation statistics, norm S-curves, attention entropy, layer effectiveness, linear probes and
    massive activations of every model on its first ``settings.n_seq`` held-out sequences; saved under
    ``results/path`` with the paper-defined summaries and their bootstrap intervals over sequences."""
    start = time.perf_counter()
    tokens = models.eval_tokens[: settings.n_seq]
    found: dict[str, Optional[ProbeSuiteResult]] = {}
    massive: dict[str, MassiveActivationResult] = {}
    rows, taken = [], set()
    with torch_threads(settings.threads):
        for key, model in models.models.items():
            row = {"name": key, "label": models.label(key), "dir": file_stem(key, taken), "status": "ok", "note": ""}
            if key in models.diverged:
                row.update(status="diverged", note="diverged in training; not probed.")
            else:
                try:
                    suite = run_probe_suite(model, tokens, seed=models.seed, s_curve_samples=settings.s_curve_samples,
                                            probe_bytes=settings.probe_bytes)
                    n_eff = min(settings.effectiveness_seqs, tokens.shape[0])
                    if n_eff != min(4, tokens.shape[0]):  # the suite measures on 4 sequences
                        with eval_mode(model), rng_preserved():
                            suite = dataclasses.replace(suite, effectiveness=compute_effectiveness(model, tokens[:n_eff]))
                    if settings.massive:
                        massive[key] = compute_massive_activations(model, tokens)
                    found[key] = suite
                except (RuntimeError, ValueError) as err:  # a broken model must not take the report down
                    row.update(status="failed", note=f"probes failed ({err}).")
            rows.append(row)
    save_probes(results / path, found, rows, seconds=time.perf_counter() - start, tokens_shape=tuple(tokens.shape),
                massive=massive, seed=models.seed, n_resamples=settings.n_resamples)
    return SectionRef("probes", path)
