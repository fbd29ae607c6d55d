#!/usr/bin/env python3
"""Goldens of every compiled recipe in both formats bridge-run emits.

  --check   (ctest golden-recipes) compare tests/golden/recipes/NAME.yaml and
            NAME.args with `bridge-run recipe show` byte for byte, with a diff
  default   rewrite them from the build (after reviewing why they changed)
"""
import argparse
import difflib
import json
import pathlib
import subprocess
import sys

FORMATS = {"yaml": "megatron-bridge-yaml", "args": "megatron-lm-args"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--bridge-run", required=True)
    ap.add_argument("--golden-dir", required=True, type=pathlib.Path)
    args = ap.parse_args()
    listing = subprocess.run([args.bridge_run, "recipe", "list", "--json"], check=True, capture_output=True,
                             text=True).stdout
    names = [r["name"] for r in json.loads(listing)]
    if not names:
        print("error: the build has no recipes")
        return 2
    args.golden_dir.mkdir(parents=True, exist_ok=True)
    failed, expected = False, set()
    for name in names:
        for ext, fmt in FORMATS.items():
            new = subprocess.run([args.bridge_run, "recipe", "show", name, "--format", fmt], check=True,
                                 capture_output=True, text=True).stdout
            golden = args.golden_dir / f"{name}.{ext}"
            expected.add(golden.name)
            if not args.check:
                golden.write_text(new)
                continue
            old = golden.read_text() if golden.exists() else ""
            if old != new:
                failed = True
                sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), str(golden),
                                                           f"bridge-run recipe show {name} --format {fmt}", n=2))
    for stale in args.golden_dir.iterdir():
        if stale.name not in expected:
            if args.check:
                print(f"error: golden {stale} belongs to no recipe")
                failed = True
            else:
                stale.unlink()
    if args.check:
        print("recipe goldens differ (see the diff above); if intended, run:\n"
              "  python3 tests/update_recipe_goldens.py --bridge-run <build>/runtime/bridge-run "
              "--golden-dir tests/golden/recipes" if failed else f"{2 * len(names)} recipe goldens match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
