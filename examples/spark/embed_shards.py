#!/usr/bin/env python3
"""Embed a sharded corpus (WebDataset tars) on Apache Spark with the `pe` binary.

Spark only schedules: each task runs `pe embed-image --files-from - --output-dir DIR` on its
shards, so every executor computes exactly what the single-process command computes. A part is
written under a temporary name and renamed when complete, and `pe` skips shards whose part
exists, so Spark's retry of a failed task (a lost executor, a killed process) redoes only the
unfinished shard. At the end the driver checks the output: every input shard has exactly one
part, no (shard, key) appears twice, and the rows equal the readable samples.

    spark-submit examples/spark/embed_shards.py \\
        --input '/data/shards/{00000..09999}.tar' --output-dir /data/embeddings \\
        -- --model PE-Core-B16-224 --batch-size 32

Arguments after `--` go to `pe embed-image` as they are (the model, dtype, batch size...).
The output directory must be shared by the driver and the executors (NFS, a mounted bucket),
and `pe` must be on each executor's PATH (or `--pe PATH`) with the model in its hub cache
(`pe download`, and HF_HUB_OFFLINE=1 on the executors).

Each task runs `pe` with `--threads` equal to `spark.task.cpus` (default 1): give executors as
many task slots as cores. Local mode retries a failed task only when asked: use
`--master 'local[2,3]'` (2 threads, up to 3 attempts a task) rather than `local[2]`.

`PE_SPARK_FAIL_ONCE=SHARD` (for tests of the retry path) kills `pe` in the first attempt of the
task holding SHARD, as soon as that shard's embedding has started, and fails the attempt.
"""

import argparse
import os
import signal
import subprocess
import sys
import time


def parse_args(argv):
    if "--" in argv:
        at = argv.index("--")
        argv, pe_args = argv[:at], argv[at + 1 :]
    else:
        pe_args = []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--input", action="append", default=[], metavar="PATTERN",
                   help="shard pattern, brace ranges as pe takes them (repeatable)")
    p.add_argument("--files-from", metavar="LIST", help="a file listing shards, one a line")
    p.add_argument("--output-dir", required=True, help="where the Parquet parts go (shared)")
    p.add_argument("--pe", default="pe", help="the pe binary on the executors (default: pe on PATH)")
    p.add_argument("--master", help="Spark master, when not run by spark-submit (e.g. 'local[2,3]')")
    p.add_argument("--tasks", type=int,
                   help="tasks to split the shards into (default: 4 per task slot, at most one per shard)")
    args = p.parse_args(argv)
    if not args.input and not args.files_from:
        p.error("give shards with --input PATTERN or --files-from LIST")
    if args.tasks is not None and args.tasks < 1:
        p.error("--tasks must be at least 1")
    args.pe_args = pe_args
    return args


def list_shards(args):
    """The shards, expanded by `pe` itself so the driver and the workers agree on every name."""
    cmd = [args.pe, "embed-image", "--output-dir", args.output_dir, "--list-shards", "--shard", "0/1"]
    for pattern in args.input:
        cmd += ["--input", pattern]
    if args.files_from:
        cmd += ["--files-from", args.files_from]
    run = subprocess.run(cmd + args.pe_args, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"embed_shards: listing the shards failed: {run.stderr.strip()}")
    return [line for line in run.stdout.splitlines() if line]


def embed_partition(pe, out_dir, pe_args, threads, fail_once):
    """The task: one `pe` process over this partition's shards."""

    def run(items):
        from pyspark import TaskContext

        shards = [s for _, s in items]
        if not shards:
            return
        ctx = TaskContext.get()
        attempt = ctx.attemptNumber() if ctx else 0
        cmd = [pe, "embed-image", "--files-from", "-", "--output-dir", out_dir,
               "--threads", str(threads)] + pe_args
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdin.write("".join(s + "\n" for s in shards))
        proc.stdin.close()
        inject = fail_once in shards and attempt == 0
        log = []
        if inject:
            _kill_mid_shard(proc, log, shards, fail_once, out_dir)
        log += proc.stderr.readlines()
        code = proc.wait()
        if inject:
            raise RuntimeError(f"injected failure: killed pe while it embedded {fail_once} (attempt 0)")
        # 1 means some samples or shards could not be read: reported, not worth a retry (the
        # driver's check names a shard left without a part). Anything else fails the attempt.
        if code not in (0, 1):
            raise RuntimeError(f"pe exited with {code} on {len(shards)} shards:\n{''.join(log[-20:])}")
        yield (ctx.partitionId() if ctx else 0, attempt, code, len(shards), "".join(log))

    return run


def _kill_mid_shard(proc, log, shards, target, out_dir):
    """Kill `pe` once it is writing `target`'s part: after the part before it is complete (pe
    prints `pe: [k/n] SHARD: ...` as each part is done, in order), as soon as the temporary
    file of `target`'s part appears."""
    at = shards.index(target)
    for line in proc.stderr:
        log.append(line)
        if at == 0 or (line.startswith("pe: [") and f"] {shards[at - 1]}:" in line):
            break
    stem = os.path.splitext(os.path.basename(target))[0]
    prefix = f".{stem}.parquet."
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        if any(n.startswith(prefix) and n.endswith(".tmp") for n in os.listdir(out_dir)):
            print(f"embed_shards: injected failure: killing pe with the part of {target} half-written",
                  file=sys.stderr, flush=True)
            break
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)


def check(spark, shards, out_dir):
    """Every shard exactly one part, no key twice, rows = readable samples. Returns problems."""
    import pyarrow.parquet as pq

    problems = []
    parts = {}
    for name in sorted(os.listdir(out_dir)):
        if name.startswith(".") or not name.endswith(".parquet"):
            continue
        meta = pq.read_metadata(os.path.join(out_dir, name))
        kv = {k.decode(): v.decode() for k, v in (meta.metadata or {}).items()}
        shard = kv.get("pe.shard")
        if shard is None:
            problems.append(f"{name}: not a part (no pe.shard metadata)")
            continue
        if shard in parts:
            problems.append(f"{shard}: two parts, {parts[shard][0]} and {name}")
        parts[shard] = (name, meta.num_rows, int(kv["pe.samples_read"]), int(kv["pe.samples_failed"]))
    wanted = set(shards)
    problems += [f"{s}: no part" for s in shards if s not in parts]
    problems += [f"{parts[s][0]}: part of {s}, which is not an input" for s in parts if s not in wanted]
    rows = sum(p[1] for s, p in parts.items() if s in wanted)
    readable = sum(p[2] - p[3] for s, p in parts.items() if s in wanted)
    for s, (name, n, read, failed) in parts.items():
        if n != read - failed:
            problems.append(f"{name}: {n} rows for {read - failed} readable samples")
    table = spark.read.parquet(out_dir)
    total = table.count()
    dup = table.groupBy("shard", "key").count().filter("count > 1").count()
    if dup:
        problems.append(f"{dup} (shard, key) pairs appear more than once")
    if total != rows:
        problems.append(f"Spark reads {total} rows; the parts' footers say {rows}")
    return problems, len(parts), rows, readable


def main(argv):
    args = parse_args(argv)
    # The executors' Python must be the driver's (same version, same packages) unless told.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("pe embed_shards")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    shards = list_shards(args)
    os.makedirs(args.output_dir, exist_ok=True)
    threads = int(sc.getConf().get("spark.task.cpus", "1"))
    tasks = min(len(shards), args.tasks or 4 * sc.defaultParallelism)
    fail_once = os.environ.get("PE_SPARK_FAIL_ONCE")
    print(f"embed_shards: {len(shards)} shards in {tasks} tasks, {threads} threads each", flush=True)
    started = time.monotonic()
    # Contiguous slices: a task's shards are neighbours, as a worker of `pe --shard` takes them.
    rdd = sc.parallelize(list(enumerate(shards)), tasks)
    results = rdd.mapPartitions(embed_partition(args.pe, args.output_dir, args.pe_args, threads, fail_once)).collect()
    elapsed = time.monotonic() - started
    for partition, attempt, code, n, _ in sorted(results):
        note = f" (attempt {attempt + 1})" if attempt else ""
        print(f"embed_shards: task {partition}: {n} shards, pe exit {code}{note}", flush=True)
    for partition, _, code, _, log in sorted(results):
        if code == 1:
            sys.stderr.write(log)
    problems, parts, rows, readable = check(spark, shards, args.output_dir)
    # Temporary files of killed attempts: nothing reads them, and no attempt is running now.
    stale = [n for n in os.listdir(args.output_dir) if n.startswith(".") and n.endswith(".tmp")]
    for name in stale:
        os.remove(os.path.join(args.output_dir, name))
    spark.stop()
    print(f"embed_shards: {parts} parts, {rows} rows ({readable} readable samples) in {elapsed:.1f}s; "
          f"removed {len(stale)} temporary files of failed attempts", flush=True)
    for p in problems:
        print(f"embed_shards: {p}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
