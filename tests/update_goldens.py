#!/usr/bin/env python3
"""Goldens of the generated tables of every shipped mapping.

  --check   (ctest golden-tables) compare tests/golden/*.inc with the build's
            output byte for byte and show a diff on mismatch
  default   rewrite tests/golden from the build output (after reviewing why
            the generated code changed)
"""
import argparse
import difflib
import pathlib
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--gen-dir", required=True, type=pathlib.Path)
    ap.add_argument("--golden-dir", required=True, type=pathlib.Path)
    args = ap.parse_args()
    generated = sorted(args.gen_dir.glob("*.inc"))
    if not generated:
        print(f"error: no generated tables in {args.gen_dir}; build first")
        return 2
    failed = False
    names = {g.name for g in generated}
    for g in generated:
        golden = args.golden_dir / g.name
        new = g.read_text()
        if not args.check:
            golden.write_text(new)
            continue
        if not golden.exists():
            print(f"error: no golden {golden}; run tests/update_goldens.py")
            failed = True
            continue
        old = golden.read_text()
        if old != new:
            failed = True
            sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True),
                                                       str(golden), str(g), n=2))
    for stale in args.golden_dir.glob("*.inc"):
        if stale.name not in names:
            if args.check:
                print(f"error: golden {stale} has no generated counterpart")
                failed = True
            else:
                stale.unlink()
    if args.check:
        print("goldens differ (see diff above); if the change is intended run:\n"
              "  python3 tests/update_goldens.py --gen-dir <build>/mappings/bridge_mappings.gen --golden-dir tests/golden"
              if failed else f"{len(generated)} goldens match")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
