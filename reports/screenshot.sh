#!/usr/bin/env bash
# Renders a meshsim report page in headless Chromium and saves a PNG screenshot: how a
# person sees the page. A developer tool, not part of `cargo test` or CI.
#
#   reports/screenshot.sh out/outlier-ejection-seed1.html reports/outlier-ejection.png [WIDTH] [HEIGHT]
#
# Needs Debian's chromium: apt-get update && apt-get install -y chromium
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH (1100)] [HEIGHT (full page)]" >&2
  exit 2
fi
html=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1100}
height=${4:-3000}
browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "chromium not found: apt-get update && apt-get install -y chromium" >&2
  exit 2
fi
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
# As root Chromium needs --no-sandbox; a fresh profile keeps runs independent. The page
# fetches nothing, and --disable-background-networking keeps Chromium itself quiet.
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking --no-first-run \
  --user-data-dir="$profile" --hide-scrollbars --force-device-scale-factor=1 \
  --window-size="$width,$height" --screenshot="$out" "file://$html" 2>/dev/null
echo "screenshot: $out"
