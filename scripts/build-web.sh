#!/usr/bin/env bash
# Builds the web console (web/) into a directory that fschedctld serves as WebRoot
# (default build/web): the console's own files and the vendor files it needs from
# web/node_modules (uPlot), and docs/openapi.json, so that the directory is self-contained and nothing is
# fetched from the internet at run time. web/node_modules comes from
# scripts/install-deps.sh (npm ci in web/).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$repo/build/web}
web=$repo/web
uplot=$web/node_modules/uplot/dist
for f in "$uplot/uPlot.esm.js" "$uplot/uPlot.min.css"; do
  if [[ ! -f $f ]]; then
    echo "build-web.sh: $f is missing: run scripts/install-deps.sh (it runs npm ci in web/)" >&2
    exit 1
  fi
done
# Built into a fresh directory next to the target, then swapped in, so that a console
# being served never sees half a build.
mkdir -p "$(dirname "$out")"
tmp=$(mktemp -d "$out.tmp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
install -m 0644 "$web/index.html" "$web/style.css" "$tmp/"
mkdir -p "$tmp/js" "$tmp/vendor"
install -m 0644 "$web"/js/*.js "$tmp/js/"
install -m 0644 "$uplot/uPlot.esm.js" "$uplot/uPlot.min.css" "$web/node_modules/uplot/LICENSE" "$tmp/vendor/"
# The OpenAPI document: fschedctld serves WebRoot/openapi.json at /openapi.json.
install -m 0644 "$repo/docs/openapi.json" "$tmp/"
chmod 0755 "$tmp" "$tmp/js" "$tmp/vendor"
rm -rf "$out.old"
[[ -e $out ]] && mv "$out" "$out.old"
mv "$tmp" "$out"
rm -rf "$out.old"
trap - EXIT
echo "build-web.sh: console built in $out"
