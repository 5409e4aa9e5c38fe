#!/usr/bin/env bash
# Side-by-side CPU benchmark: PyTorch (open_clip PE-Core-B-16, random weights) and `pe bench`
# (PE-Core-B16-224, random weights), same threads and batch sizes, run alternately so that
# machine noise hits both. Prints a table with the ratios. Not part of CI.
#
#   bench/compare_torch.sh                      # 2 rounds, batches 1 and 8, both towers
#   THREADS=1 BATCHES="1 8 32" ROUNDS=3 bench/compare_torch.sh
set -euo pipefail
cd "$(dirname "$0")/.."

THREADS=${THREADS:-$(nproc)}
BATCHES=${BATCHES:-"1 8"}
TOWERS=${TOWERS:-"image text"}
ITERS=${ITERS:-5}
ROUNDS=${ROUNDS:-2}
VENV=${VENV:-bench/.venv}
OUT=${OUT:-bench/results-$(date +%Y%m%d-%H%M%S).jsonl}

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q torch open_clip_torch timm
fi
cargo build --release -q -p pe-cli
PE=./target/release/pe

: > "$OUT"
for round in $(seq "$ROUNDS"); do
  for tower in $TOWERS; do
    for b in $BATCHES; do
      echo "round $round: $tower tower, batch $b, $THREADS thread(s)" >&2
      "$VENV/bin/python" bench/torch_bench.py --tower "$tower" --batch-size "$b" --threads "$THREADS" --iters "$ITERS" >> "$OUT"
      "$PE" bench --model PE-Core-B16-224 --tower "$tower" --batch-size "$b" --threads "$THREADS" --iters "$ITERS" --json \
        | sed 's/^{/{"impl":"pe",/' >> "$OUT"
      if [ "$tower" = image ]; then
        "$VENV/bin/python" bench/torch_bench.py --tower image --batch-size "$b" --threads "$THREADS" --iters "$ITERS" --bf16 >> "$OUT"
        "$PE" bench --model PE-Core-B16-224 --tower image --batch-size "$b" --threads "$THREADS" --iters "$ITERS" --dtype bf16 --json \
          | sed 's/^{/{"impl":"pe",/' >> "$OUT"
        "$VENV/bin/python" bench/torch_bench.py --tower image --batch-size "$b" --threads "$THREADS" --iters "$ITERS" --int8 >> "$OUT" || true
        "$PE" bench --model PE-Core-B16-224 --tower image --batch-size "$b" --threads "$THREADS" --iters "$ITERS" --dtype int8 --json \
          | sed 's/^{/{"impl":"pe",/' >> "$OUT"
      fi
    done
  done
done
"$VENV/bin/python" bench/summarize.py "$OUT"
