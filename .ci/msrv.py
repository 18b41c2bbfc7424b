#!/usr/bin/env python3
"""Fails when Cargo.toml's rust-version is below the highest rust-version of a dependency.

Reads `cargo metadata` (every feature, the locked versions), walks the resolved graph from
this crate through its normal and build dependencies (not its dev-dependencies, which users
never build), on every platform, and compares the highest `rust-version` found with this
crate's. Prints the dependencies that set the bar.

    python3 .ci/msrv.py
"""

import json
import subprocess
import sys


def version(text):
    return tuple(int(part) for part in text.split("."))


def show(v):
    return ".".join(str(part) for part in v)


def main():
    out = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        check=True, capture_output=True, text=True).stdout
    meta = json.loads(out)
    packages = {p["id"]: p for p in meta["packages"]}
    nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
    root = meta["resolve"]["root"]

    seen, todo = set(), [root]
    while todo:
        node = nodes[todo.pop()]
        for dep in node["deps"]:
            kinds = {k["kind"] for k in dep["dep_kinds"]}
            if node["id"] == root and kinds == {"dev"}:
                continue
            if dep["pkg"] not in seen:
                seen.add(dep["pkg"])
                todo.append(dep["pkg"])

    needs = sorted(
        ((version(packages[i]["rust_version"]), packages[i]["name"], packages[i]["version"])
         for i in seen if packages[i].get("rust_version")),
        reverse=True)
    declared = packages[root].get("rust_version")
    if not declared:
        sys.exit("msrv: Cargo.toml sets no rust-version")
    highest = needs[0][0] if needs else (0,)
    top = [f"{name} {v} ({show(rv)})" for rv, name, v in needs if rv == highest]
    print(f"msrv: Cargo.toml says {declared}; of {len(seen)} dependencies, the highest "
          f"rust-version is {show(highest)}: {', '.join(top)}")
    if version(declared) < highest:
        sys.exit(f"msrv: rust-version {declared} is lower than {show(highest)}; raise it in "
                 "Cargo.toml")


if __name__ == "__main__":
    main()
