#!/usr/bin/env bash
# Side-by-side CPU benchmark of pe against its peers: PyTorch eager (float32, bf16 autocast),
# ONNX Runtime (float32, dynamic int8), OpenVINO (float32, bf16, int8 from NNCF), on the same
# random-weight open_clip models and inputs (bench/peers.py), each measurement in its own
# process, every implementation once per round before the next round, so that machine noise
# hits all of them. Writes JSON lines and prints the ratio table (bench/summarize.py) with
# each one's cosine to PyTorch float32 and its share of this CPU's peak (`pe bench --peak`).
# The peers are installed from PyPI into a venv the first time; pe's Python package is built
# from ./python into it, again whenever the source has changed since. Not part of CI.
#
#   bench/compare_torch.sh                                  # T16 S16 B16 L14, batches 1 and 8
#   PRESETS="G14" BATCHES="1 4" ROUNDS=1 bench/compare_torch.sh
#   PRESETS="B16 L14" TOWERS=text bench/compare_torch.sh
#   IMPLS="ov pe" PRESETS=L14 BATCHES=1 bench/compare_torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-$(nproc)}
PRESETS=${PRESETS:-"T16 S16 B16 L14"}
TOWERS=${TOWERS:-"image text"}
TEXT_PRESETS=${TEXT_PRESETS:-"B16 L14"}
BATCHES=${BATCHES:-"1 8"}
IMPLS=${IMPLS:-"torch torch-bf16 ort ort-int8 ov ov-bf16 ov-int8 pe pe-bf16 pe-int8"}
ITERS=${ITERS:-5}
ROUNDS=${ROUNDS:-2}
VENV=${VENV:-bench/.venv}
DIR=${DIR:-bench/.peers}
OUT=${OUT:-bench/peers-$(date +%Y%m%d-%H%M%S).jsonl}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch open_clip_torch timm safetensors onnx onnxscript onnxruntime openvino nncf
fi
# pe's package is rebuilt whenever the source differs from the one it was built from: a stale
# build would time old kernels against new peers.
source_id="$(git rev-parse HEAD 2>/dev/null || echo unknown)-$(git status --porcelain -- crates python | sha1sum | cut -c1-12)"
if ! "$VENV/bin/python" -c "import perception_encoder" 2>/dev/null; then
  "$VENV/bin/pip" install -q ./python
  echo "$source_id" > "$VENV/.pe-source"
elif [ "$(cat "$VENV/.pe-source" 2>/dev/null)" != "$source_id" ]; then
  "$VENV/bin/pip" install -q --force-reinstall --no-deps ./python
  echo "$source_id" > "$VENV/.pe-source"
fi
cargo build --release -q -p pe-cli
PY="$VENV/bin/python"

# This CPU's peaks on the same threads, for the share-of-peak column: twice before the models
# and once after them; bench/summarize.py keeps each rate's best (one run at a busy moment read
# a single core's figures, which made every share twice what it was).
peak() { ./target/release/pe bench --peak --threads "$THREADS" --json | sed 's/^{/{"impl":"peak",/'; }
{ peak; peak; } > "$OUT"
for preset in $PRESETS; do
  for tower in $TOWERS; do
    [ "$tower" = text ] && [[ " $TEXT_PRESETS " != *" $preset "* ]] && continue
    for b in $BATCHES; do
      "$PY" bench/peers.py prepare --preset "$preset" --tower "$tower" --batch "$b" --dir "$DIR" 2> >(grep -v -i warn >&2)
    done
  done
done
for round in $(seq "$ROUNDS"); do
  for preset in $PRESETS; do
    for tower in $TOWERS; do
      [ "$tower" = text ] && [[ " $TEXT_PRESETS " != *" $preset "* ]] && continue
      for b in $BATCHES; do
        for impl in $IMPLS; do
          echo "round $round: $preset $tower batch $b $impl, $THREADS thread(s)" >&2
          "$PY" bench/peers.py run --impl "$impl" --preset "$preset" --tower "$tower" --batch "$b" \
            --threads "$THREADS" --iters "$ITERS" --dir "$DIR" 2>/dev/null >> "$OUT" \
            || echo "  $impl failed (see: $PY bench/peers.py run --impl $impl --preset $preset --tower $tower --batch $b)" >&2
        done
      done
    done
  done
done
peak >> "$OUT"
"$PY" bench/summarize.py "$OUT"
