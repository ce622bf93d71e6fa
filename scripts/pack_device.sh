#!/usr/bin/env bash
# Pack what a training stage needs on a GPU machine that has Python 3.12 with PyTorch, NumPy,
# Pillow, OpenCV, fontTools, msgpack, regex, tqdm and setuptools but no Debian fonts and no
# package index (this workplace's device machines): the wide set's training faces cut to the
# vocabulary, and the corpus packages that machine lacks (jieba's dictionary, wordfreq with its
# English lists only, and ftfy, langcodes, locate and wcwidth that wordfreq imports), plus a
# rapidfuzz wheel built for Python 3.12. Writes .gpu/fonts.tar.xz and .gpu/site.tar.xz (~40 MB)
# and prints what a device call would send: the tool moves at most 64 MiB with the working tree,
# so move models/training/*.pt and models/base.onnx aside for the call (git checkout restores them).
# Then, there, with .gpu carried:  bash scripts/device_stage.sh NAME [fedocr train options]
#   bash scripts/pack_device.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$PWD/.venv/bin/python"
SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# Five of the 14 Noto CJK weights stay behind (the neighbours of those packed) to fit the limit.
LEAVE_OUT="Noto Sans CJK SC DemiLight,Noto Sans CJK SC Medium,Noto Serif CJK SC Light,Noto Serif CJK SC Medium,Noto Serif CJK SC SemiBold"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# fontTools warns once per face about tables it cannot subset: kept in a log, shown on failure
if ! "$PY" scripts/pack_fonts.py --wide --leave-out "$LEAVE_OUT" "$work/fonts" >"$work/pack_fonts.log" 2>&1; then
  tail -5 "$work/pack_fonts.log" >&2
  exit 1
fi

mkdir -p "$work/site/jieba" "$work/site/wordfreq/data" "$work/site312"
# jieba: only its dictionary and what `import jieba` loads (fedocr reads dict.txt, never segments)
cp "$SITE/jieba/__init__.py" "$SITE/jieba/_compat.py" "$SITE/jieba/dict.txt" "$work/site/jieba/"
cp -r "$SITE/jieba/finalseg" "$work/site/jieba/"
cp "$SITE"/wordfreq/*.py "$work/site/wordfreq/"
cp "$SITE"/wordfreq/data/*_en.msgpack.gz "$SITE/wordfreq/data/_chinese_mapping.msgpack.gz" "$work/site/wordfreq/data/"
for pkg in ftfy langcodes locate wcwidth; do cp -r "$SITE/$pkg" "$work/site/"; done
find "$work/site" -name __pycache__ -prune -exec rm -rf {} +
version=$("$PY" -c 'import rapidfuzz; print(rapidfuzz.__version__)')
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d "$work/wheel" "rapidfuzz==$version"
(cd "$work/site312" && "$PY" -m zipfile -e "$work"/wheel/rapidfuzz-*.whl .)

mkdir -p .gpu
tar cf - -C "$work" fonts | xz -T0 -6 > .gpu/fonts.tar.xz.tmp && mv .gpu/fonts.tar.xz.tmp .gpu/fonts.tar.xz
tar cf - -C "$work" site site312 | xz -T0 -6 > .gpu/site.tar.xz.tmp && mv .gpu/site.tar.xz.tmp .gpu/site.tar.xz
du -h .gpu/*.tar.xz
# files moved aside for the call are not sent: stat skips them
sent=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | { xargs -0 stat -c %s 2>/dev/null || true; } | awk '{s += $1} END {print s + 0}')
carried=$(du -sb .gpu | cut -f1)
echo "a device call would send $(( (sent + carried) / 1048576 )) MiB (working tree $(( sent / 1048576 )), .gpu $(( carried / 1048576 ))); the limit is 64"
