#!/usr/bin/env python3
"""Embed a Spark DataFrame of images without leaving Python: `mapInPandas` loads the model once
per task and embeds each batch of rows (here image bytes read by Spark's binaryFile source).

    python examples/python/spark_embed.py '/data/images/*.jpg' embeddings.parquet --model PE-Core-B16-224

Each executor needs `perception_encoder` installed (`pip install ./python`) and the model in its
Hugging Face cache. For WebDataset tar shards, prefer examples/spark/embed_shards.py (the `pe`
binary per task, resumable parts).
"""

import argparse

import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, FloatType, StringType, StructField, StructType


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", help="a path glob Spark's binaryFile source reads")
    p.add_argument("out", help="the Parquet output")
    p.add_argument("--model", default="PE-Core-B16-224")
    p.add_argument("--config", help="a model config (with --weights) instead of a preset")
    p.add_argument("--weights")
    p.add_argument("--dtype", default="f32")
    p.add_argument("--master", help="e.g. local[2] when not run by spark-submit")
    args = p.parse_args()

    builder = SparkSession.builder.appName("pe spark_embed")
    if args.master:
        builder = builder.master(args.master)
    spark = builder.getOrCreate()
    files = spark.read.format("binaryFile").load(args.images).select("path", "content")
    schema = StructType([StructField("path", StringType()), StructField("embedding", ArrayType(FloatType()))])
    model_args = (args.model, args.config, args.weights, args.dtype)

    def embed(batches):
        import perception_encoder as pe

        name, config, weights, dtype = model_args
        threads = int(__import__("os").environ.get("PE_THREADS", "1"))
        if config:
            model = pe.Model(config=config, weights=weights, dtype=dtype, threads=threads)
        else:
            model = pe.Model(name, dtype=dtype, threads=threads)
        for df in batches:
            images = [bytes(b) for b in df["content"]]
            try:
                rows = list(model.encode_image(images))
            except ValueError:
                # A file that does not decode: embed the batch one by one, null for that file.
                rows = []
                for image in images:
                    try:
                        rows.append(model.encode_image(image)[0])
                    except ValueError:
                        rows.append(None)
            yield pd.DataFrame({"path": df["path"], "embedding": rows})

    files.mapInPandas(embed, schema).write.mode("overwrite").parquet(args.out)
    print(f"wrote {spark.read.parquet(args.out).count()} embeddings to {args.out}")
    spark.stop()


if __name__ == "__main__":
    main()
