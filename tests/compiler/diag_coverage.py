#!/usr/bin/env python3
"""Fails unless every diagnostic code of bridgec is (1) expected by at least
one test under tests/compiler and (2) documented by a row in
docs/diagnostics.md (Carbon's coverage test, for our BRnnnn codes)."""
import pathlib
import re
import subprocess
import sys

# Codes that no test can trigger, each with the reason.
UNTESTABLE = {
    "BR0103": "the error limit stops the run; tested through --error-limit in diag/BR0103-*.bridge",
}


def main():
    bridgec, tests_dir, doc = sys.argv[1], pathlib.Path(sys.argv[2]), pathlib.Path(sys.argv[3])
    listing = subprocess.run([bridgec, "--list-diagnostics"], check=True, capture_output=True, text=True).stdout
    codes = [line.split()[0] for line in listing.splitlines() if line.startswith("BR")]
    errors = [c for c in codes if not c.startswith("BR9")]  # notes carry no code in output
    expected = set()
    for f in tests_dir.rglob("*"):
        if f.is_file() and f.suffix in (".bridge", ".test"):
            expected.update(re.findall(r"\[(BR\d{4})\]", f.read_text()))
    documented = set(re.findall(r"^\|\s*(BR\d{4})\s*\|", doc.read_text(), re.M))
    missing_tests = [c for c in errors if c not in expected and c not in UNTESTABLE]
    missing_docs = [c for c in codes if c not in documented]
    for c in missing_tests:
        print(f"error: diagnostic {c} is not expected by any test under {tests_dir}")
    for c in missing_docs:
        print(f"error: diagnostic {c} has no row in {doc}")
    stale = documented - set(codes)
    for c in sorted(stale):
        print(f"error: {doc} documents {c}, which bridgec no longer has")
    if missing_tests or missing_docs or stale:
        return 1
    print(f"{len(errors)} error codes tested, {len(codes)} codes documented")
    return 0


if __name__ == "__main__":
    sys.exit(main())
