#!/usr/bin/env python3
"""Checks that `rust-version` in Cargo.toml is true for `cargo test` too:
every locked package the build or the tests use (dev-dependencies included)
declares a rust-version no newer than ours. Packages that declare none are
listed, not failed. Usage: scripts/check_rust_version.py (from anywhere)."""

import json
import subprocess
import sys
from pathlib import Path


def version(text):
    parts = [int(part) for part in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


root = Path(__file__).resolve().parent.parent
host = next(
    line.split()[1]
    for line in subprocess.run(
        ["rustc", "-vV"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    if line.startswith("host:")
)
metadata = json.loads(
    subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--locked", "--filter-platform", host],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
)
packages = {p["id"]: p for p in metadata["packages"]}
ours = next(p for p in metadata["packages"] if p["id"] in metadata["workspace_members"])
declared = version(ours["rust_version"])
# Only what the resolve for this machine's platform reaches.
used = {node["id"] for node in metadata["resolve"]["nodes"]}
too_new, undeclared = [], []
for package_id in sorted(used):
    package = packages[package_id]
    if package is ours:
        continue
    needs = package.get("rust_version")
    if needs is None:
        undeclared.append(package["name"])
    elif version(needs) > declared:
        too_new.append(f"{package['name']} {package['version']} needs Rust {needs}")
print(f"rust-version {ours['rust_version']}: {len(used) - 1} locked packages checked")
if undeclared:
    print("declare no rust-version (not checked):", ", ".join(undeclared))
if too_new:
    print("newer than rust-version:\n  " + "\n  ".join(too_new), file=sys.stderr)
    sys.exit(1)
