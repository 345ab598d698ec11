#!/usr/bin/env python3
"""Where a command's GPU time goes, kernel by kernel: runs it under Nsight
Compute (ncu, on the GPU machine) timing every kernel it launches, and
prints the kernels by total time, with their count and share, beside the
sum of all kernel time. Comparing that sum with the command's own wall
time (run without ncu) tells launch- and host-bound work from GPU-bound.

    gpu-kernel-profile.py OUT.csv [--skip N] [--count N] [--timeout S] -- COMMAND...

With --timeout the profile stops after S seconds and reports the kernels
timed so far.
"""
import csv
import io
import os
import subprocess
import sys
from collections import defaultdict


def main():
    args = sys.argv[1:]
    out = args.pop(0)
    skip, count, timeout = "0", "50000", None
    while args and args[0] != "--":
        flag, value = args.pop(0), args.pop(0)
        if flag == "--skip":
            skip = value
        elif flag == "--count":
            count = value
        elif flag == "--timeout":
            timeout = float(value)
        else:
            sys.exit(f"unknown option {flag}")
    cmd = args[1:]
    ncu = ["ncu", "--clock-control", "none", "--cache-control", "none",
           "--metrics", "gpu__time_duration.sum", "--csv", "--print-units", "base",
           "--launch-skip", skip, "--launch-count", count, "--log-file", out + ".log"] + cmd
    proc = subprocess.Popen(ncu, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
        if proc.returncode != 0:
            sys.stderr.write(err[-2000:])
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        print(f"stopped after {timeout} s", flush=True)
    text = open(out + ".log").read()
    text = text[: text.rfind("\n") + 1]  # a line cut off by the timeout
    start = text.find('"ID"')
    rows = list(csv.DictReader(io.StringIO(text[start:]))) if start >= 0 else []
    total = defaultdict(float)
    calls = defaultdict(int)
    for r in rows:
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"].split("(")[0][:70]
        total[name] += float(r["Metric Value"].replace(",", ""))
        calls[name] += 1
    whole = sum(total.values())
    with open(out, "w") as f:
        f.write("kernel,calls,total_ns,share\n")
        for name, ns in sorted(total.items(), key=lambda kv: -kv[1]):
            f.write(f"\"{name}\",{calls[name]},{ns:.0f},{ns / whole:.4f}\n")
    print(f"{sum(calls.values())} kernels, {whole / 1e9:.3f} s of kernel time")
    for name, ns in sorted(total.items(), key=lambda kv: -kv[1])[:25]:
        print(f"  {ns / 1e6:10.1f} ms {100 * ns / whole:5.1f}% {calls[name]:7} x  {name}")


if __name__ == "__main__":
    main()
