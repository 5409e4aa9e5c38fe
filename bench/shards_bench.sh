#!/usr/bin/env bash
# The shard benchmark (docs/shards.md): a synthetic WebDataset corpus embedded by one `pe`
# process and by Spark local[2] through examples/spark/embed_shards.py with the same total
# threads, beside `pe bench` at the same batch size, dtype and weights.
#
#   bench/shards_bench.sh [PRESET] [DTYPE] [BATCH]     (default PE-Core-T16-384 int8 16)
#
# Env: WORK (default /tmp/pe-shards-bench: corpus, random checkpoint, outputs), PYTHON (a
# Python with pyspark, pyarrow, Pillow and numpy; default python3), SHARDS and PER (corpus
# shape, default 100 x 100). Needs java for Spark.
set -euo pipefail
cd "$(dirname "$0")/.."
preset="${1:-PE-Core-T16-384}"
dtype="${2:-int8}"
batch="${3:-16}"
work="${WORK:-/tmp/pe-shards-bench}"
py="${PYTHON:-python3}"
shards="${SHARDS:-100}"
per="${PER:-100}"
threads=2

cargo build -q --release -p pe-cli
cargo build -q --release -p perception-encoder --example random_checkpoint
pe="$(pwd)/target/release/pe"
mkdir -p "$work"
corpus="$work/corpus-${shards}x${per}"
last=$(printf '%05d' $((shards - 1)))
[ -f "$corpus/$last.tar" ] || "$py" bench/make_shards.py "$corpus" --shards "$shards" --per "$per"
weights="$work/$preset.safetensors"
[ -f "$weights" ] || target/release/examples/random_checkpoint "$preset" "$weights"
input="$corpus/{00000..$last}.tar"
model=(--model "$preset" --weights "$weights" --dtype "$dtype" --batch-size "$batch")

now() { date +%s.%N; }
echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -n 1), $(nproc) cores; flags: $(grep -o -w -E 'avx512f|avx512_bf16|avx512_vnni|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "corpus: $((shards * per)) images (256x256 JPEG) in $shards shards; $preset $dtype, batch $batch, $threads threads in all"

bench=$("$pe" bench "${model[@]}" --threads "$threads" --iters 5 --json)
echo "pe bench: $bench"

rm -rf "$work/single"
t0=$(now)
"$pe" embed-image "${model[@]}" --threads "$threads" --input "$input" --output-dir "$work/single" 2>"$work/single.log"
t1=$(now)
single=$(echo "$t1 - $t0" | bc)

rm -rf "$work/spark"
t0=$(now)
"$py" examples/spark/embed_shards.py --master "local[$threads,3]" --pe "$pe" --input "$input" \
  --output-dir "$work/spark" -- "${model[@]}" >"$work/spark.out" 2>"$work/spark.log"
t1=$(now)
spark=$(echo "$t1 - $t0" | bc)
job=$(sed -n 's/.* rows .* in \([0-9.]*\)s;.*/\1/p' "$work/spark.out")
cat "$work/spark.out"

n=$((shards * per))
"$py" - "$n" "$single" "$spark" "$job" "$bench" <<'PY'
import json, sys
n, single, spark, job = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
bench = json.loads(sys.argv[5])
b = bench.get("items_per_s") or bench.get("images_per_s")
print(f"| run | seconds | images/s | vs pe bench |")
print(f"|---|---|---|---|")
print(f"| pe bench (model only) | - | {b:.2f} | 1.00 |")
print(f"| one pe process, {n} images | {single:.1f} | {n / single:.2f} | {n / single / b:.2f} |")
print(f"| Spark local[2], whole run (JVM start included) | {spark:.1f} | {n / spark:.2f} | {n / spark / b:.2f} |")
print(f"| Spark local[2], the job alone | {job:.1f} | {n / job:.2f} | {n / job / b:.2f} |")
print(f"Spark overhead: {100 * (spark / single - 1):+.1f}% whole run, {100 * (job / single - 1):+.1f}% job alone")
PY
