#!/usr/bin/env bash
# Forbidden terms (.ci/forbidden-terms.txt) on the public surfaces: README.md,
# docs/, the OpenAPI document as the server serves it, and the problem
# titles. Prints file:line for every hit and fails on any.
set -euo pipefail
cd "$(dirname "$0")/../.."
source .ci/lib/palisade.bash

tmp=$(mktemp -d)
trap 'stop_palisade; rm -rf "$tmp"' EXIT

build_palisade
mkdir "$tmp/server"
start_palisade "$tmp/server"
timeout 30 python3 - "$PALISADE_URL/v1/openapi.json" "$tmp/openapi.json" <<'PY'
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=20) as r:
    doc = json.load(r)
# One value a line, so a hit has a line number worth reading.
with open(sys.argv[2], "w") as f:
    json.dump(doc, f, indent=1, ensure_ascii=False)
PY
stop_palisade

timeout 60 python3 - "$tmp/openapi.json" <<'PY'
import glob, re, sys

terms = []
for line in open(".ci/forbidden-terms.txt", encoding="utf-8"):
    line = line.strip()
    if line and not line.startswith("#"):
        terms.append(line)
pattern = re.compile("|".join(r"(?<!\w)" + re.escape(t) + r"(?!\w)" for t in terms), re.IGNORECASE)

def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return list(enumerate(f, 1))

# name shown, numbered lines
surfaces = [("README.md", lines_of("README.md"))]
surfaces += [(p, lines_of(p)) for p in sorted(glob.glob("docs/**/*", recursive=True)) if p.endswith((".md", ".txt", ".json", ".yaml", ".yml", ".html"))]
surfaces.append(("GET /v1/openapi.json (pretty-printed)", lines_of(sys.argv[1])))
# Problem titles: the match arms of `fn title` in the error type.
error_rs = "crates/core/src/error.rs"
titles, inside = [], False
for n, line in lines_of(error_rs):
    if line.startswith("fn title("):
        inside = True
    elif inside and line.startswith("}"):
        break
    elif inside:
        m = re.search(r'=> "([^"]*)"', line)
        if m:
            titles.append((n, m.group(1)))
if len(titles) < 5:
    sys.exit(f"found only {len(titles)} problem titles in {error_rs}: has fn title moved?")
surfaces.append((error_rs + " (problem titles)", titles))

hits = 0
for name, lines in surfaces:
    for n, text in lines:
        for m in pattern.finditer(text):
            hits += 1
            print(f"{name}:{n}: forbidden term {m.group(0)!r}: {text.strip()[:160]}")
checked = ", ".join(name for name, _ in surfaces)
if hits:
    sys.exit(f"{hits} forbidden term(s) found (list: .ci/forbidden-terms.txt)")
print(f"no forbidden term ({len(terms)} terms) in: {checked}")
PY
