#!/usr/bin/env python3
"""Checks the cross references of the docs and the code against the tree.

    python3 scripts/check_docs.py [REPO]

- `file.md#anchor` (in any tracked text file): the file exists and has a heading of that anchor
  (GitHub's rule: lower case, punctuation dropped, spaces to hyphens);
- relative Markdown links `[text](path)` in .md files: the path exists;
- `Note [Name]` anywhere: some comment or heading defines it (a line that starts, after `//`, `#`
  or `###`, with `Note [Name]`);
- repository paths in backticks in .md files (`src/...`, `tests/...`, `configs/...`, ...,
  with `{a,b}` alternatives expanded): they exist.

Prints one line per broken reference (file:line: what) and exits 1 if there is any, else 0.
"""
import os
import re
import subprocess
import sys

TEXT = re.compile(r"\.(md|h|cpp|cu|cmake|sh|py|yaml|html|txt)$|CMakeLists\.txt$")
SELF = os.path.abspath(__file__)
ROOTS = ("src/", "tests/", "configs/", "docs/", "scripts/", "bench/", "launch/", "apps/", ".ci/")


def slug(heading):
    heading = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return heading.replace(" ", "-")


def expand(path):
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m.group(1).split(",")
            for p in expand(path[:m.start()] + alt + path[m.end():])]


def main(repo):
    os.chdir(repo)
    listed = subprocess.run(["git", "ls-files"], capture_output=True, text=True)
    if listed.returncode == 0:
        files = listed.stdout.split()
    else:  # not a git checkout: every file but build trees
        files = [os.path.relpath(os.path.join(d, n)) for d, dirs, names in os.walk(".")
                 for n in names if not os.path.relpath(d).startswith(("build", ".git"))]
    this = os.path.relpath(SELF)  # its docstring shows the patterns
    files = [f for f in files if TEXT.search(f) and os.path.isfile(f) and f != this]
    texts = {f: open(f, encoding="utf-8", errors="replace").read().split("\n") for f in files}
    anchors = {}
    for f, lines in texts.items():
        if f.endswith(".md"):
            anchors[f] = {slug(m.group(1)) for line in lines
                          for m in [re.match(r"#+\s+(.*)", line)] if m}
    by_name = {}
    for f in anchors:
        by_name.setdefault(os.path.basename(f), []).append(f)
    defined = set()
    for lines in texts.values():
        for line in lines:
            m = re.match(r"\s*(?://+|#+)\s*Note \[([^\]]+)\]", line)
            if m:
                defined.add(m.group(1))
    broken = []
    for f, lines in texts.items():
        for n, line in enumerate(lines, 1):
            where = f"{f}:{n}"
            for m in re.finditer(r"([\w-]+\.md)#([\w-]+)", line):
                targets = by_name.get(m.group(1), [])
                if not targets:
                    broken.append(f"{where}: {m.group(0)}: no such file")
                elif not any(m.group(2) in anchors[t] for t in targets):
                    broken.append(f"{where}: {m.group(0)}: no such heading")
            for m in re.finditer(r"Note \[([^\]]+)\]", line):
                if m.group(1) not in defined:
                    broken.append(f"{where}: Note [{m.group(1)}] is defined nowhere")
            if not f.endswith(".md"):
                continue
            for m in re.finditer(r"\]\(([^)#\s]+)(#[^)]*)?\)", line):
                target = m.group(1)
                if re.match(r"[a-z]+:", target):
                    continue  # a URL
                path = os.path.normpath(os.path.join(os.path.dirname(f), target))
                if not os.path.exists(path):
                    broken.append(f"{where}: link to {target}: no such file")
            for m in re.finditer(r"`([^`\s]+)`", line):
                token = m.group(1).rstrip(".,:;")
                if not token.startswith(ROOTS) or any(c in token for c in "*<>$"):
                    continue
                path = re.split(r"[:(]", token)[0]
                for p in expand(path):
                    if not os.path.exists(p):
                        broken.append(f"{where}: `{p}`: no such path")
    for b in broken:
        print(b)
    print(f"check_docs: {len(files)} files, {len(broken)} broken references")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
