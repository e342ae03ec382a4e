#!/usr/bin/env bash
# The cost of splitting a model across two processes on one machine: `patchwork bench` in one
# process with 2 threads against `mpirun -n 2 patchwork bench --parallel PLAN` with 1 thread
# per rank (the same cores), alternating, medians of ROUNDS rounds, ratios against one process.
#
#   bench/scripts/vs_parallel.sh PATCHWORK_BIN ROUNDS DIR... (PLANS="tp ep tp+ep"; a dense
#   model runs tp only; BENCH_FLAGS as for ab.sh)
#
# Without mpirun it prints a note and exits 0.
set -euo pipefail
bin=$1 rounds=$2
shift 2
flags=${BENCH_FLAGS:-"--prompt-len 64 --decode 32 --repeats 3"}
plans=${PLANS:-"tp ep tp+ep"}
if ! command -v mpirun >/dev/null; then
    echo "note: mpirun not found (apt-get install openmpi-bin): nothing measured"
    exit 0
fi
out=$(mktemp)
for dir in "$@"; do
    moe=$(grep -c '"num_experts"' "$dir/config.json" || true)
    for _ in $(seq "$rounds"); do
        # shellcheck disable=SC2086
        echo "$dir one $(RAYON_NUM_THREADS=2 "$bin" bench "$dir" $flags | tail -1)" >> "$out"
        for plan in $plans; do
            if [ "$moe" = 0 ] && [ "$plan" != tp ]; then continue; fi
            # shellcheck disable=SC2086
            echo "$dir $plan $(RAYON_NUM_THREADS=1 mpirun --allow-run-as-root --oversubscribe -n 2 \
                "$bin" bench "$dir" $flags --parallel "$plan" | tail -1)" >> "$out"
        done
    done
done
python3 - "$out" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    m = re.match(r"(\S+) (\S+) prefill_tok_s=([\d.]+) decode_tok_s=([\d.]+)", line)
    if m:
        runs.setdefault((m[1], m[2]), []).append((float(m[3]), float(m[4])))
print("| model | run | prefill tok/s | vs one | decode tok/s | vs one |")
print("| --- | --- | --- | --- | --- | --- |")
for (model, run), v in runs.items():
    p, d = statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)
    one = runs[(model, "one")]
    p1, d1 = statistics.median(x[0] for x in one), statistics.median(x[1] for x in one)
    print(f"| {model} | {run} | {p:.1f} | {p/p1:.2f} | {d:.2f} | {d/d1:.2f} |")
PY
rm -f "$out"
