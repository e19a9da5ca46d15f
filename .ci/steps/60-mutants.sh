#!/usr/bin/env bash
# Mutation testing (cargo-mutants) of the security crates' changed code: each
# mutant made in lines changed since the commit in .ci/mutants-base must be
# caught by its crate's unit tests, or be listed with a reason in
# .ci/mutants-accepted.txt. See docs/mutants.md.
set -euo pipefail
cd "$(dirname "$0")/../.."

MUTANTS_VERSION=27.1.0
# Whole run, and each mutant's test run (the unit suites take seconds).
LIMIT=${MUTANTS_SECS:-900}
PER_MUTANT=${MUTANTS_TEST_SECS:-120}
PACKAGES=(palisade-guard palisade-auth palisade-core palisade-audit palisade-admission palisade-store palisade-digest
  palisade-cluster)
# Of palisade-store, only the credit and audit store code: its own unit tests
# (credits_tests, audit_tests, audit_copy's) pin it; the rest of the crate is
# not run yet. The cluster and audit_copy tests need Redis and PostgreSQL
# (PALISADE_TEST_REDIS_URL, PALISADE_TEST_POSTGRES_URL, set by .ci/run).
SOURCES=(crates/guard/src crates/auth/src crates/core/src crates/audit/src crates/admission/src
  crates/store/src/credits.rs crates/store/src/audit.rs crates/store/src/audit_copy.rs crates/digest/src
  crates/cluster/src)
ACCEPTED=.ci/mutants-accepted.txt

if [ "$(cargo mutants --version 2>/dev/null || true)" != "cargo-mutants $MUTANTS_VERSION" ]; then
  # cargo install builds in a temporary directory of its own.
  (unset CARGO_TARGET_DIR && timeout 1200 cargo install cargo-mutants --version "$MUTANTS_VERSION" --locked)
fi

base=$(grep -oE '^[0-9a-f]{7,40}' .ci/mutants-base | head -1)
if git cat-file -e "$base^{commit}" 2>/dev/null; then
  echo "mutants: code changed since $base"
elif git cat-file -e "HEAD~1^{commit}" 2>/dev/null; then
  echo "mutants: base $base is not in this clone (shallow?): checking the last commit's changes only"
  base=HEAD~1
else
  echo "NOT CHECKED: mutants (neither $base nor HEAD~1 is in this clone)" >&2
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# Against the work tree, which is HEAD in CI: cargo-mutants checks that the
# diff's new text is the source it mutates. Test modules mutate nothing.
git diff --no-ext-diff --no-color "$base" -- "${SOURCES[@]}" \
  ':(exclude,glob)**/tests/**' ':(exclude,glob)**/tests.rs' >"$tmp/diff"
if [ ! -s "$tmp/diff" ]; then
  echo "mutants: no change in ${SOURCES[*]} since $base: nothing to mutate"
  exit 0
fi
git diff --stat "$base" -- "${SOURCES[@]}" | tail -1

pkgs=()
for p in "${PACKAGES[@]}"; do pkgs+=(-p "$p"); done
# The builds of the mutated copies share the checkout's target dir, so the
# dependencies built for the test suite are not built again.
export CARGO_TARGET_DIR
CARGO_TARGET_DIR=$(mkdir -p "${CARGO_TARGET_DIR:-target}" && cd "${CARGO_TARGET_DIR:-target}" && pwd)
args=("${pkgs[@]}" --in-diff "$tmp/diff" -j 1 --timeout "$PER_MUTANT" -o "$tmp")

if ! cargo mutants --list "${args[@]}" >"$tmp/list" 2>"$tmp/list.err"; then
  echo "FAIL: cargo-mutants could not list the mutants of the diff:" >&2
  cat "$tmp/list.err" >&2
  exit 1
fi
count=$(grep -c . "$tmp/list" || true)
echo "mutants: $count in the changed code (of ${PACKAGES[*]})"
if [ "$count" -eq 0 ]; then
  echo "mutants: the changes hold no mutable code (tests, comments, declarations)"
  exit 0
fi

start=$SECONDS
set +e
timeout -k 60 "$LIMIT" cargo mutants "${args[@]}"
rc=$?
set -e
echo "mutants: finished in $((SECONDS - start)) s (exit $rc)"
out="$tmp/mutants.out"

# 0: all caught; 2: some missed; 3: some timed out (a hang is a detection).
# 124/137: the step's time limit; anything else: the run itself failed.
case $rc in
  0 | 2 | 3) ;;
  124 | 137) ;;
  *)
    echo "FAIL: cargo-mutants failed (exit $rc); its logs:" >&2
    tail -n 60 "$out/log/baseline.log" >&2 2>/dev/null || true
    exit 1
    ;;
esac

tested=0
for kind in caught missed timeout unviable; do
  n=0
  [ -f "$out/$kind.txt" ] && n=$(grep -c . "$out/$kind.txt" || true)
  tested=$((tested + n))
  printf 'mutants: %-8s %s\n' "$kind" "$n"
done

# A mutant is named "file:line:column: description"; the accepted list names
# it without the line and column, which move as code is edited.
fail=0
if [ -f "$out/missed.txt" ]; then
  accepted=$(grep -vE '^[[:space:]]*(#|$)' "$ACCEPTED" || true)
  while IFS= read -r m; do
    [ -n "$m" ] || continue
    key=$(printf '%s\n' "$m" | sed -E 's/^([^:]+):[0-9]+:[0-9]+: /\1: /')
    if printf '%s\n' "$accepted" | grep -qxF -- "$key"; then
      echo "mutants: accepted survivor: $m"
    else
      echo "MISSED: $m" >&2
      fail=1
    fi
  done <"$out/missed.txt"
fi

if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
  # Untested security code does not land: a change too large to check here
  # is checked locally (docs/mutants.md), then the base moves past it.
  echo "FAIL: $((count - tested)) of $count mutants not checked (the step's $LIMIT s ran out);" \
    "run docs/mutants.md's command locally, then move .ci/mutants-base forward" >&2
  fail=1
fi
if [ "$fail" -ne 0 ]; then
  echo "FAIL: mutants survived the unit tests: add a test that kills each, or list it" \
    "with its reason in $ACCEPTED (docs/mutants.md)" >&2
  exit 1
fi
echo "mutants: no unaccepted survivor among the $tested tested"
