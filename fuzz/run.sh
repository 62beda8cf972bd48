#!/usr/bin/env bash
# Fuzz the EDN reader and the project loader (needs a nightly toolchain and cargo-fuzz).
# Usage: fuzz/run.sh [SECONDS_PER_TARGET]   (default 600)
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
for t in edn_parse project_load; do
  mkdir -p "corpus/$t"
  # seed with every EDN file the project ships and the Aidbox samples
  find .. ../../shared/aidbox -name '*.edn' -not -path '*/target/*' -not -path '*/corpus/*' 2>/dev/null \
    | while read -r f; do cp "$f" "corpus/$t/$(echo "$f" | tr '/.' '__')"; done
done
cargo +nightly fuzz run edn_parse corpus/edn_parse -- -max_total_time="$secs" -max_len=65536 &
cargo +nightly fuzz run project_load corpus/project_load -- -max_total_time="$secs" -max_len=65536
wait
