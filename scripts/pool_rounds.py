#!/usr/bin/env python3
"""Pools the throughput rounds of several `scripts/bench.sh` runs.

One run's median can land on either side of 1.0x on a machine that drifts, so
keep each run's `target/bench/results.jsonl` (copy it away before the next run
overwrites it) and pool them:

    scripts/pool_rounds.py run1.jsonl run2.jsonl ...

Within a run, the k-th duplex run at a client count is paired with the k-th
reference run at that count (a round runs every server back to back). Prints
each run's median ratio, then the median over all rounds with a 95 % bootstrap
interval.
"""
import json
import random
import statistics
import sys


def ratios(path):
    """{clients: [duplex/reference per round]} of one results file."""
    rates = {}
    for line in open(path):
        row = json.loads(line)
        if row["section"] == "throughput" and row["server"] in ("duplex", "reference"):
            result = row["result"]
            rates.setdefault(result["clients"], {}).setdefault(row["server"], []).append(result["rate"])
    return {clients: [d / r for d, r in zip(by["duplex"], by["reference"]) if r]
            for clients, by in rates.items() if "duplex" in by and "reference" in by}


def main(paths):
    pooled = {}
    for path in paths:
        for clients, found in sorted(ratios(path).items()):
            print(f"{path}: {clients} clients, {len(found)} rounds, median {statistics.median(found):.2f}x")
            pooled.setdefault(clients, []).extend(found)
    rng = random.Random(1)
    for clients, found in sorted(pooled.items()):
        medians = sorted(statistics.median(rng.choices(found, k=len(found))) for _ in range(5000))
        low, high = medians[len(medians) // 40], medians[len(medians) * 39 // 40]
        above = sum(x > 1 for x in found)
        print(f"all: {clients} clients, {len(found)} rounds, median {statistics.median(found):.2f}x "
              f"(95 % bootstrap {low:.2f}x to {high:.2f}x), {above} above 1")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
