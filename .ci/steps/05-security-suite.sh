#!/usr/bin/env bash
# Names and counts the security regression suite (see .config/nextest.toml,
# profile `security`). Its tests already ran in the suite above; this shows
# which they are, and fails if the suite lost its tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
list=$(timeout 600 cargo nextest list --workspace --profile security 2>/dev/null)
count=$(printf '%s\n' "$list" | grep -c .)
printf '%s\n' "$list" | awk '{print $1}' | sort | uniq -c
echo "security regression suite: $count tests"
if [ "$count" -lt 200 ]; then
  echo "the security suite has only $count tests: a filter in .config/nextest.toml lost them" >&2
  exit 1
fi
