"""Bytes one decoding step reads from a GGUF file, as the file stores them: every tensor but the
token embedding (one row of it is looked up), the expert banks counted for the experts each token
uses (`expert_used_count / expert_count` of their bytes). Prints the count.

    python bench/scripts/gguf_bytes_per_token.py FILE.gguf
"""

import sys

from gguf import GGUFReader


def field(reader, key):
    f = reader.fields.get(key)
    return None if f is None else int(f.parts[f.data[0]][0])


def main(path):
    reader = GGUFReader(path)
    arch_field = reader.fields["general.architecture"]
    arch = bytes(arch_field.parts[arch_field.data[0]]).decode()
    used = field(reader, f"{arch}.expert_used_count")
    count = field(reader, f"{arch}.expert_count")
    total = 0.0
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            continue
        n = int(t.n_bytes)
        if "_exps." in t.name and used and count:
            n = n * used / count
        total += n
    print(int(total))


if __name__ == "__main__":
    main(sys.argv[1])
