"""Times transformers (PyTorch eager, float32) on a checkpoint the way the Rust harness times
the others: one prefill of the prompt, then greedy decoding one token at a time with the KV
cache, `--repeats` times after one warm-up. Prints one JSON line:
{"prefill_tok_s": [...], "decode_tok_s": [...], "tokens": [...]} (tokens: the first repeat's
greedy ids, for the harness to compare).

    python3 bench/scripts/torch_bench.py DIR --prompt 5,6,7 --decode 32 --repeats 5 --threads 2

The harness (`cargo bench --manifest-path bench/Cargo.toml`) runs it when `python3` can import
torch and transformers, and prints a note instead otherwise.
"""

import argparse
import inspect
import json
import time

import torch
from transformers import AutoModelForCausalLM


def run(model, prompt, decode):
    # transformers 5.24 renamed `past_key_values` to `cache` (the old name warns).
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids = torch.tensor([prompt])
    tokens = []
    with torch.inference_mode():
        start = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        nxt = int(out.logits[0, -1].argmax())
        tokens.append(nxt)
        first = time.perf_counter()
        past = out[key] if key in out else out.past_key_values
        for _ in range(decode):
            out = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{key: past})
            past = out[key] if key in out else out.past_key_values
            nxt = int(out.logits[0, -1].argmax())
            tokens.append(nxt)
        end = time.perf_counter()
    return first - start, end - first, tokens


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--prompt", required=True, help="comma-separated token ids")
    p.add_argument("--decode", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    prompt = [int(t) for t in a.prompt.split(",")]
    model = AutoModelForCausalLM.from_pretrained(
        a.dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    run(model, prompt, 4)  # warm-up
    prefill, decode, tokens = [], [], None
    for _ in range(a.repeats):
        tp, td, toks = run(model, prompt, a.decode)
        prefill.append(len(prompt) / tp)
        decode.append(a.decode / td)
        tokens = tokens or toks
    print(json.dumps({"prefill_tok_s": prefill, "decode_tok_s": decode, "tokens": tokens}))


if __name__ == "__main__":
    main()
