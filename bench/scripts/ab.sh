#!/usr/bin/env bash
# A/B of two `patchwork` binaries on the same checkpoints, alternating runs in one script so
# both see the same machine state; prints each run's last line and the medians with the
# ratio new/base. Usage: bench/scripts/ab.sh BASE_BIN NEW_BIN ROUNDS DIR [DIR ...]
# (`patchwork bench` flags through BENCH_FLAGS, default "--repeats 3").
set -euo pipefail
base=$1 new=$2 rounds=$3
shift 3
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
for dir in "$@"; do
  : > /tmp/ab.base; : > /tmp/ab.new
  for ((i = 0; i < rounds; i++)); do
    for side in base new; do
      bin=$base; [ "$side" = new ] && bin=$new
      line=$("$bin" bench "$dir" ${BENCH_FLAGS:---repeats 3} | tail -n 1)
      echo "$line" >> "/tmp/ab.$side"
    done
  done
  for what in prefill decode; do
    b=$(sed -n "s/.*${what}_tok_s=\([0-9.]*\).*/\1/p" /tmp/ab.base | median)
    n=$(sed -n "s/.*${what}_tok_s=\([0-9.]*\).*/\1/p" /tmp/ab.new | median)
    printf '%s %-8s base %8.1f  new %8.1f  new/base %.3f\n' "$(basename "$dir")" "$what" "$b" "$n" "$(echo "$n / $b" | bc -l)"
  done
done
