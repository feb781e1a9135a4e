#!/usr/bin/env bash
# cargo deny over Cargo.lock with deny.toml. Licenses, bans and sources need only crate
# metadata (crates.io). Advisories need the RustSec database, a git clone from github.com:
#   - reachable: it is fetched and checked;
#   - unreachable but cached (CARGO_HOME/advisory-dbs, e.g. from an earlier run or a copied
#     directory): checked against that copy, with its age printed;
#   - neither: the advisories check is skipped with a message (FERRY_REQUIRE_ADVISORIES=1
#     turns that into a failure, for machines that do have the network).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo deny --locked check --hide-inclusion-graph bans licenses sources

db_root="${CARGO_HOME:-$HOME/.cargo}/advisory-dbs"
if timeout 120 cargo deny --locked fetch db >/tmp/ferry-deny-fetch.log 2>&1; then
  cargo deny --locked check --disable-fetch advisories
elif compgen -G "$db_root/*/.git" >/dev/null; then
  db=$(compgen -G "$db_root/*/.git" | head -n 1)
  when=$(git -C "$db/.." log -1 --format=%cs 2>/dev/null || echo "unknown date")
  echo "cargo deny: the RustSec advisory database could not be fetched; checking against the cached copy in ${db%/.git} (last commit $when)" >&2
  cargo deny --locked check --disable-fetch advisories
else
  echo "cargo deny: SKIPPED the advisories check: the RustSec advisory database (github.com) is unreachable and no copy is cached in $db_root. Licenses, bans and sources were checked. Fetch log:" >&2
  tail -n 3 /tmp/ferry-deny-fetch.log >&2
  if [ "${FERRY_REQUIRE_ADVISORIES:-0}" = 1 ]; then
    exit 1
  fi
fi
