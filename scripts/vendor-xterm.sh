#!/usr/bin/env bash
# Vendor xterm.js and its addons into runlet/ui/static/vendor, reproducibly.
#
#   scripts/vendor-xterm.sh
#
# The versions are pinned in scripts/ui-vendor/package.json and its lockfile (with each
# tarball's integrity hash); `npm ci --ignore-scripts` installs exactly those into a temporary
# folder, and the ES module builds, xterm's stylesheet and the licence are copied into the
# package. runlet/ui/static/vendor/VENDORED lists every vendored file with its package, version
# and sha256; tests/unit/test_ui_static.py checks the files against it. Running the script
# again with the same lockfile gives the same bytes. The installed package needs no network:
# the page loads nothing but these files.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out="$repo/runlet/ui/static/vendor"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cp "$here/ui-vendor/package.json" "$here/ui-vendor/package-lock.json" "$work/"
(cd "$work" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)

# package  file inside it  name in vendor/
files=(
    "@xterm/xterm lib/xterm.mjs xterm.mjs"
    "@xterm/xterm css/xterm.css xterm.css"
    "@xterm/xterm LICENSE LICENSE.xterm"
    "@xterm/addon-fit lib/addon-fit.mjs addon-fit.mjs"
    "@xterm/addon-search lib/addon-search.mjs addon-search.mjs"
    "@xterm/addon-web-links lib/addon-web-links.mjs addon-web-links.mjs"
    "@xterm/addon-unicode11 lib/addon-unicode11.mjs addon-unicode11.mjs"
    "@xterm/addon-serialize lib/addon-serialize.mjs addon-serialize.mjs"
)

rm -rf "$out"
mkdir -p "$out"
{
    echo "# Vendored by scripts/vendor-xterm.sh from scripts/ui-vendor/package-lock.json; do not edit."
    echo "# file  package@version  sha256"
} >"$out/VENDORED"
for entry in "${files[@]}"; do
    read -r package inner name <<<"$entry"
    src="$work/node_modules/$package/$inner"
    version=$(node -p "require('$work/node_modules/$package/package.json').version")
    # the source-map comment names a file we do not ship: drop it, so the browser asks for nothing
    sed -e '/^\/\/# sourceMappingURL=/d' "$src" >"$out/$name"
    sum=$(sha256sum "$out/$name" | cut -d' ' -f1)
    printf '%s  %s@%s  %s\n' "$name" "$package" "$version" "$sum" >>"$out/VENDORED"
done
echo "vendored ${#files[@]} files into ${out#"$repo"/}"
