#!/usr/bin/env bash
# Dependency audit: licenses, sources, bans and RustSec advisories
# (deny.toml), offline, against the advisory snapshot in ../shared.
set -euo pipefail
cd "$(dirname "$0")/../.."

DENY_VERSION=0.20.2
SNAPSHOT=../shared/advisory-db

if [ "$(cargo deny --version 2>/dev/null || true)" != "cargo-deny $DENY_VERSION" ]; then
  timeout 1200 cargo install cargo-deny --version "$DENY_VERSION" --locked
fi
# The snapshot sits beside the checkout (../shared); a clone elsewhere
# looks in the workplace's copy.
[ -f "$SNAPSHOT/SNAPSHOT.md" ] || SNAPSHOT=/work/shared/advisory-db
if [ ! -f "$SNAPSHOT/SNAPSHOT.md" ]; then
  echo "NOT CHECKED: advisories (no RustSec snapshot at ../shared/advisory-db or /work/shared/advisory-db)" >&2
  timeout 600 cargo fetch --locked
  timeout 600 cargo deny --offline check licenses sources
  timeout 600 cargo deny --offline check --hide-inclusion-graph bans
  exit 0
fi

# cargo-deny reads the database from a git repository named after the
# upstream URL under db-path (deny.toml: target/advisory-dbs), and takes
# the HEAD commit's date (or HEAD's file time) as the database's age. The snapshot is read-only
# and no repository, so a copy becomes one, dated when it was taken: a
# snapshot older than deny.toml's maximum-db-staleness fails the check.
dbs=target/advisory-dbs
db="$dbs/advisory-db-3157b0e258782691"
taken=$(grep -oE '\(20[0-9]{2}-[0-9]{2}-[0-9]{2}\)' "$SNAPSHOT/SNAPSHOT.md" | head -1 | tr -d '()' || true)
if [ -z "$taken" ]; then
  # No date written down: the newest advisory's.
  taken=$(grep -rhoE '^date = "20[0-9-]{8}"' "$SNAPSHOT/crates" | cut -d'"' -f2 | sort | tail -1)
fi
echo "advisory snapshot taken $taken"
rm -rf "$db"
mkdir -p "$dbs"
cp -r "$SNAPSHOT" "$db"
chmod -R u+w "$db"
(
  cd "$db"
  git init -q
  git add -A
  GIT_AUTHOR_DATE="${taken}T00:00:00Z" GIT_COMMITTER_DATE="${taken}T00:00:00Z" \
    git -c user.name=ci -c user.email=ci@localhost -c commit.gpgsign=false commit -q -m "advisory snapshot $taken"
  # cargo-deny also takes HEAD's file time as a fetch time.
  touch -d "${taken}T00:00:00Z" .git/HEAD
)

# --offline keeps cargo metadata from downloading too: fetch first.
timeout 600 cargo fetch --locked
timeout 600 cargo deny --offline check advisories licenses sources
# Duplicate versions are warnings only: without the long inclusion graphs.
timeout 600 cargo deny --offline check --hide-inclusion-graph bans
