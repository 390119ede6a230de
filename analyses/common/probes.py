"""Every probe on every model of a set; results saved for the ``probes`` renderer."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from analyses.common.inputs import ModelSet
from analyses.common.threads import torch_threads
from normlens.probes.suite import ProbeSuiteResult, run_probe_suite
from normlens.report.manifest import SectionRef
from normlens.report.sections._common import file_stem
from normlens.report.sections.probes import save_probes


@dataclass(frozen=True)
class ProbeSettings:
    n_seq: int = 8  # held-out sequences probed
    s_curve_samples: int = 512
    probe_bytes: int = 1 << 20  # activations kept for the linear probes
    threads: Optional[int] = 1  # tiny tensors: one thread avoids contention on a shared machine


def run_probes(models: ModelSet, results: Path, path: str = "probes",
               settings: ProbeSettings = ProbeSettings()) -> SectionRef:
    """Activation statistics, norm S-curves, attention entropy, layer effectiveness and linear probes of
    every model on its first ``settings.n_seq`` held-out sequences; saved under ``results/path``."""
    start = time.perf_counter()
    tokens = models.eval_tokens[: settings.n_seq]
    found: dict[str, Optional[ProbeSuiteResult]] = {}
    rows, taken = [], set()
    with torch_threads(settings.threads):
        for key, model in models.models.items():
            row = {"name": key, "label": models.label(key), "dir": file_stem(key, taken), "status": "ok", "note": ""}
            if key in models.diverged:
                row.update(status="diverged", note="diverged in training; not probed.")
            else:
                try:
                    found[key] = run_probe_suite(model, tokens, seed=models.seed,
                                                 s_curve_samples=settings.s_curve_samples,
                                                 probe_bytes=settings.probe_bytes)
                except (RuntimeError, ValueError) as err:  # a broken model must not take the report down
                    row.update(status="failed", note=f"probes failed ({err}).")
            rows.append(row)
    save_probes(results / path, found, rows, seconds=time.perf_counter() - start, tokens_shape=tuple(tokens.shape))
    return SectionRef("probes", path)
