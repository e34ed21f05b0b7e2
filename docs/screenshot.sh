#!/usr/bin/env bash
# Refresh docs/report.png: the HTML report (`rollout --report x.html`) of the
# example rollout, rolled out in a scratch copy of examples/ (so no state
# lands in the repository), screenshotted by headless Chromium.
#   docs/screenshot.sh [OUT.png]   (needs chromium; python3 with atmosbuild's deps)
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${1:-$REPO/docs/report.png}
PYTHON=${PYTHON:-$( [ -x /work/venv/bin/python ] && echo /work/venv/bin/python || echo python3 )}
CHROMIUM=${CHROMIUM:-$(command -v chromium || command -v chromium-browser)}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

cp -r examples "$TMP/examples"
rm -rf "$TMP/examples/.atmos" "$TMP/examples/.local-cloud"
# -k: a component that fails here (nixpacks is rarely installed) shows what a failure looks like.
PYTHONPATH=$REPO "$PYTHON" -m atmosbuild -C "$TMP/examples" rollout '//...:dev' -j2 -k \
  --report "$TMP/report.html" >/dev/null 2>&1 || true
test -s "$TMP/report.html"

flags=(--headless --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --user-data-dir="$TMP/profile" --hide-scrollbars
       --window-size=1300,1100)
[ "$(id -u)" = 0 ] && flags+=(--no-sandbox)
"$CHROMIUM" "${flags[@]}" --screenshot="$OUT" "file://$TMP/report.html" 2>/dev/null
echo "wrote $OUT"
