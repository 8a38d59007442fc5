#!/usr/bin/env bash
# Puts the MNI152 2009 tissue templates where the brain-shaped generator
# (synth/brain.h) looks for them: data/mni152-2009/ in the source tree
# (ignored by git), or the folder given as $1.
#
# They come from the nilearn wheel on PyPI (pinned version and SHA-256),
# fetched with pip's own client; nothing is downloaded when the generator
# runs. The wheel ships, in nilearn/datasets/data/, the ICBM 2009a
# nonlinear symmetric templates at 1 mm on a 197x233x189 grid (uint8,
# 0..255): grey-matter and white-matter probability maps and the T1
# template (skull-stripped; the generator takes the brain and its CSF from
# it). No CSF map is shipped. The three files are copied verbatim and
# checked by SHA-256; synth/brain.cpp converts them once per process
# (about 0.5 s) into the tissue fractions and deep-nuclei labels it draws
# from. About 5 MB. Licence: see docs/config.md ("Brain-shaped volumes").
#
# Usage: scripts/prepare-templates.sh [OUT_DIR]   (idempotent)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/data/mni152-2009}
version=0.14.1
wheel=nilearn-$version-py3-none-any.whl
wheel_sha=725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a
declare -A want=(
  [gm]=97a5ca69bd24db37a9cb7b32525e1733a209af904129bf1cd36da06d24243bed
  [wm]=382d92812de4744f9c86c7a0e4f680dc317a0a50e4da1f0153618a6798c7b7db
  [t1]=421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6)

ok=1
for t in gm wm t1; do
  f=$out/$t.nii.gz
  [ -f "$f" ] && [ "$(sha256sum "$f" | cut -d' ' -f1)" = "${want[$t]}" ] || ok=0
done
if [ $ok = 1 ]; then
  echo "prepare-templates: $out is up to date"
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps --only-binary=:all: "nilearn==$version" -d "$tmp" ||
  { echo "prepare-templates: pip could not download nilearn $version from PyPI" >&2; exit 1; }
[ "$(sha256sum "$tmp/$wheel" | cut -d' ' -f1)" = "$wheel_sha" ] ||
  { echo "prepare-templates: $wheel does not have the expected SHA-256" >&2; exit 1; }
mkdir -p "$out"
for t in gm wm t1; do
  python3 - "$tmp/$wheel" "$t" "$out/$t.nii.gz.tmp" <<'PY'
import shutil, sys, zipfile
wheel, t, dst = sys.argv[1:]
name = f"nilearn/datasets/data/mni_icbm152_{t}_tal_nlin_sym_09a_converted.nii.gz"
with zipfile.ZipFile(wheel) as z, z.open(name) as src, open(dst, "wb") as d:
    shutil.copyfileobj(src, d)
PY
  [ "$(sha256sum "$out/$t.nii.gz.tmp" | cut -d' ' -f1)" = "${want[$t]}" ] ||
    { echo "prepare-templates: $t template in $wheel has an unexpected SHA-256" >&2; exit 1; }
  mv "$out/$t.nii.gz.tmp" "$out/$t.nii.gz"
done
echo "prepare-templates: wrote $out/{gm,wm,t1}.nii.gz from $wheel"
