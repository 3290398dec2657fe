#!/usr/bin/env bash
# Re-create book/_vendor/ (offline JavaScript for the built book) from the npm registry.
# Pinned versions; run from anywhere:  bash book/vendor.sh
# Needs node + npm and access to registry.npmjs.org. Installs into a temporary
# folder (never into the repository's node_modules) and copies only the files
# the book loads at runtime.
set -euo pipefail

HTML_MANAGER_VERSION=1.0.15   # @jupyter-widgets/html-manager (ipywidgets 8 widget protocol 2.x)
REQUIREJS_VERSION=2.3.8
MATHJAX_VERSION=3.2.2
# MathJax TeX extensions that the autoloader may fetch; the rest of [tex]/ is left out
# to keep the folder small (an unknown one only shows a "loading failed" error in that formula).
TEX_EXTENSIONS="boldsymbol cancel color bbox braket cases enclose mathtools upgreek gensymb"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dest="$here/_vendor"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm init -y >/dev/null
npm install --no-audit --no-fund --ignore-scripts --no-save \
  "@jupyter-widgets/html-manager@${HTML_MANAGER_VERSION}" \
  "requirejs@${REQUIREJS_VERSION}" \
  "mathjax@${MATHJAX_VERSION}" >/dev/null
nm="$tmp/node_modules"

# keep the hand-written files (README.md, mathjax2-hub-shim.js), replace everything else
mkdir -p "$dest"
find "$dest" -mindepth 1 -maxdepth 1 ! -name README.md ! -name mathjax2-hub-shim.js -exec rm -rf {} +
mkdir -p "$dest/licenses"

cp "$nm/requirejs/require.js" "$dest/require.js"
cp "$nm/@jupyter-widgets/html-manager/dist/embed-amd.js" "$dest/embed-amd.js"

mj="$nm/mathjax/es5"
mkdir -p "$dest/mathjax/input/tex/extensions" "$dest/mathjax/output/chtml/fonts" "$dest/mathjax/a11y"
cp "$mj/startup.js" "$mj/core.js" "$dest/mathjax/"
cp "$mj/input/tex.js" "$dest/mathjax/input/"
cp "$mj/output/chtml.js" "$dest/mathjax/output/"
cp "$mj/output/chtml/fonts/tex.js" "$dest/mathjax/output/chtml/fonts/"
cp -r "$mj/output/chtml/fonts/woff-v2" "$dest/mathjax/output/chtml/fonts/"
cp "$mj/a11y/assistive-mml.js" "$dest/mathjax/a11y/"
for ext in $TEX_EXTENSIONS; do
  cp "$mj/input/tex/extensions/$ext.js" "$dest/mathjax/input/tex/extensions/"
done

# requirejs and html-manager ship no LICENSE file in their npm tarballs: their
# licences (MIT, BSD-3-Clause) are stated in README.md; require.js carries its header.
cp "$nm/@jupyter-widgets/html-manager/dist/embed.js.LICENSE.txt" "$dest/licenses/html-manager-bundled-LICENSES.txt"
cp "$nm/mathjax/LICENSE" "$dest/licenses/mathjax-LICENSE"

echo "vendored into $dest:"
du -sh "$dest"
