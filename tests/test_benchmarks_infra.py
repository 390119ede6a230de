"""The benchmark command's plumbing (no timings): results blocks, rows, the GPU check's dry run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.results import Row, Section, sections_markdown, update_block, write_json

ROOT = Path(__file__).resolve().parents[1]


def test_update_block_replaces_its_own_block_and_keeps_the_others(tmp_path):
    md = tmp_path / "RESULTS.md"
    md.write_text("# Fused-kernel benchmarks\n\nold notes\n")
    update_block("python -m benchmarks", "first run", md)
    update_block("benchmarks/gpu_check.sh", "gpu run", md)
    update_block("python -m benchmarks", "second run", md)
    text = md.read_text()
    assert text.count("<!-- begin python -m benchmarks -->") == 1
    assert "second run" in text and "first run" not in text and "gpu run" in text
    assert "old notes" in text  # an earlier file is kept, marked as earlier notes
    assert text.index("second run") < text.index("gpu run")  # blocks keep their places


def test_sections_markdown_and_json(tmp_path):
    sections = [
        Section("probes", "Probes", [Row("probes", "a | b", 1.234, target="≤ 1.3x"),
                                     Row("probes", "memory", 42.0, "MB"), Row("probes", "nan", float("nan"))]),
        Section("kernels", "Kernels", status="skipped", note="no CUDA GPU"),
    ]
    text = sections_markdown(sections)
    assert "| a \\| b | 1.23x | ≤ 1.3x |" in text and "| memory | 42 MB |" in text and "| nan | – |" in text
    assert "**skipped**: no CUDA GPU" in text
    data = json.loads(write_json(tmp_path / "r.json", {"cpu": "x"}, "cmd", sections).read_text())
    assert data["sections"]["probes"]["rows"][2]["value"] is None and data["sections"]["probes"]["machine"] == {"cpu": "x"}
    write_json(tmp_path / "r.json", {"cpu": "y"}, "cmd2", sections[1:])  # rerunning one section keeps the other
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["sections"]["probes"]["command"] == "cmd" and data["sections"]["kernels"]["machine"] == {"cpu": "y"}


def test_no_fixed_temporary_paths_in_the_benchmarks():
    for path in (ROOT / "benchmarks").glob("*.py"):
        assert '"/tmp/' not in path.read_text(), path


def test_gpu_check_dry_run_lists_every_step_within_eight_minutes():
    out = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    for step in ("kernel tests, compiled", "TRITON_INTERPRET=0", "tests/kernels", "gpu_paths.py probes",
                 "gpu_paths.py landscape", "bench_kernels.py --quick"):
        assert step in out, step
    total = int(out.split("time limits add up to ")[1].split("s")[0])
    assert total <= 480


def test_the_benchmark_command_lists_its_sections():
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    for section in ("probes", "train_step", "hessian", "landscape", "kernels", "scale", "--quick"):
        assert section in out
