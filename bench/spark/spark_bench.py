"""Spark Structured Streaming side of the Sluice benchmarks (bench/src/bench.rs runs it).

Each scenario is the same query as the Sluice manifest the runner writes, on the same files,
with Spark `local[2]` (2 cores, as Sluice gets). Output protocol on stdout, one line each:

  QUERY_START                        the streaming query was started (JVM and session are up)
  PROGRESS rows=<n> ms=<d> batch=<id> a trigger committed (StreamingQueryListener.onQueryProgress);
                                     rows is Spark's numInputRows, which for JSON files counts rows
                                     after the filter pushed into the parser, so the runner takes
                                     input rows from the data set it generated instead
  FIRST_BATCH                        the first committed trigger that read rows
  DONE rows=<n> seconds=<s>          input rows and seconds from query start to termination

Spark settings that are not defaults, and why:
  spark.sql.shuffle.partitions=2     the default 200 would make the stateful scenario pay for 200
                                     state-store partitions on 2 cores; 2 is what a tuned job uses
  spark.ui.enabled=false             no web UI in a benchmark (and no console progress bar)
  log level WARN                     quiet logs
"""

import argparse
import os
import sys
import threading
import time

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from pyspark.sql.streaming import StreamingQueryListener

SCHEMA = "deviceId STRING, temperature DOUBLE, danger_level STRING, timestamp TIMESTAMP"


def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


class Progress(StreamingQueryListener):
    def __init__(self):
        self.rows = 0
        self.first = threading.Event()

    def onQueryStarted(self, event):
        pass

    def onQueryProgress(self, event):
        p = event.progress
        rows = int(p.numInputRows)
        self.rows += rows
        ms = int(p.durationMs.get("triggerExecution", 0))
        say(f"PROGRESS rows={rows} ms={ms} batch={p.batchId}")
        if rows > 0 and not self.first.is_set():
            self.first.set()
            say("FIRST_BATCH")

    def onQueryIdle(self, event):
        pass

    def onQueryTerminated(self, event):
        pass


def session():
    spark = (
        SparkSession.builder.master("local[2]")
        .appName("sluice-bench")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("WARN")
    listener = Progress()
    spark.streams.addListener(listener)
    return spark, listener


def json_stream(spark, args):
    return (
        spark.readStream.schema(SCHEMA)
        .option("maxFilesPerTrigger", args.max_files)
        .json(args.input)
    )


def finish(listener, query, started):
    query.awaitTermination()
    seconds = time.monotonic() - started
    # The listener runs on its own thread: give the last event a moment to arrive.
    time.sleep(0.5)
    say(f"DONE rows={listener.rows} seconds={seconds:.3f}")


def filter_high(spark, listener, args):
    events = json_stream(spark, args)
    started = time.monotonic()
    query = (
        events.where(F.col("danger_level") == "HIGH")
        .writeStream.format("parquet")
        .option("path", args.output)
        .option("checkpointLocation", args.checkpoint)
        .outputMode("append")
        .trigger(availableNow=True)
        .start()
    )
    say("QUERY_START")
    finish(listener, query, started)


def window_avg(spark, listener, args):
    events = json_stream(spark, args)
    started = time.monotonic()
    query = (
        events.withWatermark("timestamp", "10 minutes")
        .groupBy(F.window("timestamp", "1 minute").alias("window"), "deviceId")
        .agg(F.avg("temperature").alias("avg_temp"), F.count("*").alias("n"))
        .writeStream.format("parquet")
        .option("path", args.output)
        .option("checkpointLocation", args.checkpoint)
        .outputMode("append")
        .trigger(availableNow=True)
        .start()
    )
    say("QUERY_START")
    finish(listener, query, started)


def rate_aggregate(spark, listener, args):
    # Per-batch aggregation (foreachBatch), the same semantics as Sluice's `sqlScope: microBatch`.
    rate = (
        spark.readStream.format("rate")
        .option("rowsPerSecond", args.rows_per_second)
        .option("numPartitions", 2)
        .load()
    )

    def per_batch(batch, batch_id):
        (
            batch.groupBy((F.col("value") % 10).alias("k"))
            .agg(F.count("*").alias("n"), F.max("value").alias("max_value"))
            .write.format("noop")
            .mode("overwrite")
            .save()
        )

    started = time.monotonic()
    query = (
        rate.writeStream.foreachBatch(per_batch)
        .option("checkpointLocation", args.checkpoint)
        .start()
    )
    say("QUERY_START")
    query.awaitTermination(args.seconds)
    query.stop()
    seconds = time.monotonic() - started
    time.sleep(0.5)
    say(f"DONE rows={listener.rows} seconds={seconds:.3f}")


def startup(spark, listener, args):
    # The filter query with the default trigger: runs its first batch, then idles polling.
    events = json_stream(spark, args)
    started = time.monotonic()
    query = (
        events.where(F.col("danger_level") == "HIGH")
        .writeStream.format("parquet")
        .option("path", args.output)
        .option("checkpointLocation", args.checkpoint)
        .outputMode("append")
        .start()
    )
    say("QUERY_START")
    listener.first.wait(timeout=300)
    time.sleep(args.idle_seconds)
    query.stop()
    seconds = time.monotonic() - started
    say(f"DONE rows={listener.rows} seconds={seconds:.3f}")


SCENARIOS = {
    "filter": filter_high,
    "window": window_avg,
    "rate": rate_aggregate,
    "startup": startup,
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--input")
    parser.add_argument("--output")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--max-files", type=int, default=2)
    parser.add_argument("--rows-per-second", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--idle-seconds", type=float, default=4.0)
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    spark, listener = session()
    try:
        SCENARIOS[args.scenario](spark, listener, args)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
