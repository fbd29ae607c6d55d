#!/usr/bin/env python3
"""Code lines per model family: mappings/<family>.bridge with every fragment it imports (transitively),
beside Megatron-Bridge's Python bridge for the same family, and the ratio against the target of issue 22
(a mapping at most a quarter of Megatron-Bridge's lines).

  scripts/mapping_lines.py                 print the table (Markdown)
  scripts/mapping_lines.py --write         replace the table in docs/models/README.md
  scripts/mapping_lines.py --recount DIR   recount the files named in docs/models/megatron-bridge-lines.json
                                           at the HEAD of DIR (a Megatron-Bridge checkout or bare git
                                           directory) and rewrite the JSON with the counts and the commit

A .bridge code line is a line with anything but blanks outside a '#' comment ('#' is the only comment of
grammar/BridgeLexer.g4; inside a string it is text). A Python code line holds a token that is not a comment
and not part of a string statement (docstrings, module, class, function and attribute ones alike). Megatron-
Bridge is not needed to print the table: its counts come from the JSON, which records the commit counted.
"""
import argparse
import ast
import io
import json
import pathlib
import re
import subprocess
import sys
import tokenize

ROOT = pathlib.Path(__file__).resolve().parent.parent
MAPPINGS = ROOT / "mappings"
IMPORT_DIRS = [MAPPINGS / "common"]  # as mappings/CMakeLists.txt passes to bridgec
DATA = ROOT / "docs" / "models" / "megatron-bridge-lines.json"
README = ROOT / "docs" / "models" / "README.md"
BEGIN = "<!-- scripts/mapping_lines.py: begin -->"
END = "<!-- scripts/mapping_lines.py: end -->"

_STRING = re.compile(r'"(?:[^"\\\r\n]|\\.)*"')
_IMPORT = re.compile(r'^\s*import\s+"([^"]+)"\s*;')


def bridge_code(line: str) -> str:
    """The line without its '#' comment; strings are kept whole."""
    out, pos = [], 0
    while pos < len(line):
        m = _STRING.match(line, pos)
        if m:
            out.append(m.group())
            pos = m.end()
        elif line[pos] == "#":
            break
        else:
            out.append(line[pos])
            pos += 1
    return "".join(out)


def bridge_files(path: pathlib.Path, seen=None) -> list:
    """path and every file it imports, transitively, each once; resolved as bridgec does (relative to the
    importing file, then each import directory)."""
    seen = [] if seen is None else seen
    path = path.resolve()
    if path in seen:
        return seen
    seen.append(path)
    for line in path.read_text().splitlines():
        m = _IMPORT.match(bridge_code(line))
        if not m:
            continue
        for d in [path.parent] + IMPORT_DIRS:
            if (d / m.group(1)).exists():
                bridge_files(d / m.group(1), seen)
                break
        else:
            sys.exit(f"{path}: import \"{m.group(1)}\" not found")
    return seen


def bridge_lines(path: pathlib.Path) -> int:
    return sum(1 for line in path.read_text().splitlines() if bridge_code(line).strip())


def python_lines(src: str) -> int:
    strings = [(n.lineno, n.col_offset, n.end_lineno, n.end_col_offset) for n in ast.walk(ast.parse(src))
               if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)]
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENDMARKER, tokenize.ENCODING}
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in skip or any((a, b) <= tok.start < (c, d) for a, b, c, d in strings):
            continue
        lines.update(range(tok.start[0], tok.end[0] + 1))
    return len(lines)


def recount(repo: str) -> None:
    data = json.loads(DATA.read_text())
    git = ["git", "-C", repo]
    data["commit"] = subprocess.check_output(git + ["rev-parse", "HEAD"], text=True).strip()
    data["commit_date"] = subprocess.check_output(git + ["log", "-1", "--format=%cs", "HEAD"], text=True).strip()
    for fam in data["families"].values():
        files = fam.get("files", [])
        fam["lines"] = {f: python_lines(subprocess.check_output(git + ["show", f"HEAD:{f}"], text=True))
                        for f in files} or None
    DATA.write_text(json.dumps(data, indent=2) + "\n")


def table() -> str:
    data = json.loads(DATA.read_text())
    rows, met, compared = [], 0, 0
    for bridge in sorted(MAPPINGS.glob("*.bridge")):
        family = bridge.stem
        files = bridge_files(bridge)
        counts = [bridge_lines(f) for f in files]
        ours = sum(counts)
        ours_cell = f"{ours}" if len(files) == 1 else f"{' + '.join(map(str, counts))} = {ours}"
        ours_files = ", ".join(f"`{f.relative_to(MAPPINGS)}`" for f in files)
        mb = data["families"].get(family, {})
        mb_lines = mb.get("lines") or {}
        if mb_lines:
            theirs = sum(mb_lines.values())
            mb_files = ", ".join(f"`{f.split('/models/', 1)[-1]}`" for f in mb_lines)
            mb_cell = f"{theirs}" if len(mb_lines) == 1 else f"{' + '.join(map(str, mb_lines.values()))} = {theirs}"
            ratio = f"{ours / theirs:.2f}"
            own = f"{counts[0] / theirs:.2f}"
            ok = ours * 4 <= theirs
            verdict = "yes" if ok else "no"
            compared += 1
            met += ok
        else:
            mb_files, mb_cell, ratio, verdict, own = "—", "—", "—", "—", "—"
        rows.append(f"| {family} | {ours_files} | {ours_cell} | {mb_files} | {mb_cell} | {ratio} | {verdict} | {own} |")
    head = ["| family | our files | our lines | Megatron-Bridge files | Megatron-Bridge lines | ratio | ≤ ¼ "
            "| ratio, own file alone |",
            "|---|---|---:|---|---:|---:|---|---:|"]
    tail = [f"\n{met} of the {compared} families that Megatron-Bridge has meet the target "
            f"(Megatron-Bridge at `{data['commit'][:7]}`, {data['commit_date']})."]
    return "\n".join(head + rows + tail)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help=f"replace the table in {README.relative_to(ROOT)}")
    ap.add_argument("--recount", metavar="DIR", help="recount Megatron-Bridge at the HEAD of DIR")
    args = ap.parse_args()
    if args.recount:
        recount(args.recount)
    text = table()
    if not args.write:
        print(text)
        return 0
    doc = README.read_text()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{README}: no '{BEGIN}' ... '{END}' block")
    start, stop = doc.index(BEGIN) + len(BEGIN), doc.index(END)
    README.write_text(doc[:start] + "\n" + text + "\n" + doc[stop:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
