#!/usr/bin/env bash
# The GPU check: everything normlens does differently on a CUDA GPU, in one run of under 8 minutes
# on an H100/H200. Run it first whenever a GPU is available.
#
#   benchmarks/gpu_check.sh            run every step, write the results into benchmarks/RESULTS.md
#   benchmarks/gpu_check.sh --dry-run  list the steps and their time limits (works on any machine)
#   benchmarks/gpu_check.sh --full     the full kernel sweep (all widths, torch.compile) instead of --quick
#
# Steps (each under its own time limit; together at most 475 s):
#   0. environment: python, torch, CUDA device, triton, and the imports normlens needs
#   1. kernel tests compiled, not interpreted (TRITON_INTERPRET=0): outputs and gradients of the fused
#      LayerNorm/RMSNorm/DyT kernels and the attention-entropy kernel on CUDA tensors, and the two
#      determinism tests that skip on every machine without a GPU
#   2. the probe GPU path: statistics and attention entropy on CUDA against the same on CPU, which
#      kernels ran (the entropy kernel must), device-to-host copies, time against a plain forward
#   3. the batched landscape forward on CUDA against the CPU surface, time per grid point
#   4. the kernel benchmark (bench_kernels.py --quick; --full for the whole sweep)
# Logs go to $GPU_CHECK_LOGS (default: $OUT/gpu_check when OUT is set, else /tmp/gpu_check); the summary
# replaces the "benchmarks/gpu_check.sh" block of benchmarks/RESULTS.md ($GPU_CHECK_RESULTS to write
# another file) and bench_kernels.py its own.
#
# Python packages: the machine's python3 needs torch, triton and normlens's dependencies. Where some
# are missing (transformer-lens, datasets, dill, multiprocess are not on every GPU image), put their
# wheels in .whl/ at the repository root: they are installed to /tmp/site first (no network needed).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
KERNEL_BENCH="--quick"
for arg in "$@"; do
  case "$arg" in
    --dry-run) DRY=1 ;;
    --full) KERNEL_BENCH="" ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown option $arg (use --dry-run, --full)" >&2; exit 2 ;;
  esac
done

PY="${PYTHON:-python3}"
LOGS="${GPU_CHECK_LOGS:-${OUT:+$OUT/gpu_check}}"
LOGS="${LOGS:-/tmp/gpu_check}"
RESULTS="${GPU_CHECK_RESULTS:-benchmarks/RESULTS.md}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# name | time limit (s) | command
STEPS=(
  "environment|45|$PY -c 'import torch, triton; assert torch.cuda.is_available(), \"no CUDA device\"; print(torch.__version__, triton.__version__, torch.cuda.get_device_name()); import transformer_lens, datasets, normlens.probes, normlens.landscape, normlens.kernels.layer_norm'"
  "kernel tests, compiled|200|env TRITON_INTERPRET=0 $PY -m pytest -q -rs -p no:cacheprovider tests/kernels"
  "probe GPU path|60|env TRITON_INTERPRET=0 $PY benchmarks/gpu_paths.py probes --json $LOGS/probes.json"
  "landscape forward on CUDA|50|env TRITON_INTERPRET=0 $PY benchmarks/gpu_paths.py landscape --json $LOGS/landscape.json"
  "kernel benchmark|120|env TRITON_INTERPRET=0 $PY benchmarks/bench_kernels.py $KERNEL_BENCH --out $RESULTS"
)

if [ "$DRY" = 1 ]; then
  echo "gpu_check.sh --dry-run: would run, in order (logs in $LOGS):"
  total=0
  i=0
  for step in "${STEPS[@]}"; do
    IFS='|' read -r name limit command <<<"$step"
    printf '  %d. %-28s limit %3ss  %s\n' "$i" "$name" "$limit" "$command"
    total=$((total + limit))
    i=$((i + 1))
  done
  [ -d .whl ] && echo "  first: install the wheels in .whl/ to /tmp/site"
  echo "  then: write the summary into benchmarks/RESULTS.md (block 'benchmarks/gpu_check.sh')"
  echo "  time limits add up to ${total}s"
  exit 0
fi

mkdir -p "$LOGS"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

SUMMARY="$LOGS/summary.tsv"
: >"$SUMMARY"
status=0
i=0
for step in "${STEPS[@]}"; do
  IFS='|' read -r name limit command <<<"$step"
  log="$LOGS/step$i.log"
  echo "== $i. $name (limit ${limit}s): $command"
  start=$(date +%s)
  timeout --kill-after=10 "$limit" bash -c "$command" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  seconds=$(( $(date +%s) - start ))
  case "$rc" in
    0) outcome="passed" ;;
    124|137) outcome="timed out after ${limit}s" ;;
    *) outcome="failed (exit $rc)" ;;
  esac
  printf '%s\t%s\t%s\t%s\n' "$i. $name" "$outcome" "$seconds" "$log" >>"$SUMMARY"
  echo "== $i. $name: $outcome in ${seconds}s"
  [ "$rc" = 0 ] || status=1
  if [ "$i" = 0 ] && [ "$rc" != 0 ]; then
    echo "gpu_check.sh: the environment step failed; the other steps need it (see $log)" >&2
    break
  fi
  i=$((i + 1))
done

$PY - "$LOGS" "$RESULTS" <<'EOF'
import json, sys
from pathlib import Path

from benchmarks.results import update_block

logs = Path(sys.argv[1])
lines = ["## `benchmarks/gpu_check.sh`", ""]
env = (logs / "step0.log").read_text().strip().splitlines() if (logs / "step0.log").exists() else []
lines += [f"- machine: {env[-1] if env else 'unknown'}", "", "| step | outcome | seconds |", "|---|---|---|"]
for row in (logs / "summary.tsv").read_text().splitlines():
    step, outcome, seconds, log = row.split("\t")
    lines.append(f"| {step} | {outcome} | {seconds} |")
tests = logs / "step1.log"
if tests.exists():
    tail = [l for l in tests.read_text().splitlines() if l.startswith(("SKIPPED", "FAILED", "ERROR")) or " passed" in l
            or " failed" in l]
    lines += ["", "Kernel tests (compiled):", "", "```", *tail[-30:], "```"]
for name in ("probes", "landscape"):
    path = logs / f"{name}.json"
    if path.exists():
        data = json.loads(path.read_text())
        lines += ["", f"GPU {name} check ({data['device']}): {'ok' if data['ok'] else 'FAILED'}", "",
                  "| check | value | ok | details |", "|---|---|---|---|"]
        for r in data["rows"]:
            v = r["value"]
            shown = f"{v:.3g}" if isinstance(v, float) else str(v)
            lines.append(f"| {r['check']} | {shown} {r.get('unit', '')} | {r['ok']} | {r.get('detail', '')} |")
lines += ["", "The kernel benchmark's tables are in the bench_kernels block below."]
update_block("benchmarks/gpu_check.sh", "\n".join(lines), Path(sys.argv[2]))
print(f"wrote {sys.argv[2]}")
EOF
exit $status
