"""Spark side of the Nexmark benchmark (bench/src/bench_nexmark.rs runs it; docs/bench.md).

Runs one Nexmark query of bench/nexmark/ as a Spark Structured Streaming query (`spark.sql` over
streaming temp views, `local[2]`) over the JSON-lines files the runner wrote
(<data>/<table>/part-*.json: the events of Sluice's `nexmark` source), into the `noop` sink with
`trigger(availableNow=True)` (every file, then stop). Each query is the same computation as the
Sluice manifest of that name. Every query of the suite is submitted, also those Spark cannot run on a stream: Spark's
own analysis refuses them (e.g. "Non-time-based windows are not supported on streaming
DataFrames"), and that refusal is the answer to "where expressible".

Output on stdout, one line:

  DONE seconds=<s> cpu=<c>     seconds from the query's start to its end (JVM and session start-up
                               excluded, in Spark's favour) and the driver JVM's CPU seconds over
                               the same span (/proc/<pid>/stat user + system: every thread, GC and
                               JIT included; local[2] executes in that JVM)
  UNSUPPORTED <message>        Spark refused the query (an AnalysisException at start); exit 3

Settings that are not defaults, and why:
  local[2], spark.sql.shuffle.partitions=2   the 2 cores Sluice gets (the default 200 shuffle
                                             partitions would pay for 200 state stores)
  spark.sql.session.timeZone=UTC             event times are UTC instants (q14's hour())
  maxFilesPerTrigger=1                       as the Sluice file runs read (one file per batch)
  spark.ui.enabled=false                     no web UI in a benchmark
"""

import argparse
import os
import sys
import time

from pyspark.errors import AnalysisException
from pyspark.sql import SparkSession

SCHEMAS = {
    "person": "id BIGINT, name STRING, emailAddress STRING, creditCard STRING, city STRING, "
    "state STRING, dateTime TIMESTAMP, extra STRING",
    "auction": "id BIGINT, itemName STRING, description STRING, initialBid BIGINT, reserve BIGINT, "
    "dateTime TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT, extra STRING",
    "bid": "auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING, "
    "dateTime TIMESTAMP, extra STRING",
}

CHANNEL_ID = "'(&|^)channel_id=([^&]*)'"

# Each query as its Sluice manifest computes it (bench/nexmark/<name>.yaml), in Spark SQL.
QUERIES = {
    "q0": "SELECT auction, bidder, price, dateTime, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, dateTime, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE auction % 123 = 0",
    "q3": """SELECT P.name, P.city, P.state, A.id
             FROM auction A JOIN person P ON A.seller = P.id
             WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')""",
    "q4": """SELECT Q.category, avg(Q.final) AS avg_final
             FROM (SELECT max(B.price) AS final, A.category
                   FROM auction A JOIN bid B
                     ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires
                   GROUP BY A.id, A.category) Q
             GROUP BY Q.category""",
    "q5": """SELECT auction, num, w FROM (
               SELECT auction, num, w, max(num) OVER (PARTITION BY w) AS maxn FROM (
                 SELECT auction, count(*) AS num, window(dateTime, '10 seconds', '2 seconds') AS w
                 FROM bid GROUP BY auction, window(dateTime, '10 seconds', '2 seconds')) A) T
             WHERE num = maxn""",
    "q7": """SELECT auction, price, bidder, dateTime, extra, w FROM (
               SELECT *, max(price) OVER (PARTITION BY w) AS maxprice
               FROM (SELECT *, window(dateTime, '10 seconds') AS w FROM bid) B) T
             WHERE price = maxprice""",
    "q8": """SELECT P.id, P.name, A.reserve
             FROM person P JOIN auction A
               ON P.id = A.seller
              AND A.dateTime BETWEEN P.dateTime AND P.dateTime + INTERVAL 10 SECONDS""",
    "q9": """SELECT id, itemName, seller, category, price, bidder FROM (
               SELECT A.id, A.itemName, A.seller, A.category, B.price, B.bidder,
                 ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.dateTime ASC) AS rownum
               FROM auction A JOIN bid B
                 ON A.id = B.auction AND B.dateTime BETWEEN A.dateTime AND A.expires) W
             WHERE rownum <= 1""",
    "q11": """SELECT bidder, count(*) AS bid_count, session_window(dateTime, '10 seconds') AS w
              FROM bid GROUP BY bidder, session_window(dateTime, '10 seconds')""",
    # A stream-static join: the CSV side input is read once as a batch DataFrame.
    "q13": """SELECT B.auction, B.bidder, B.price, B.dateTime, S.value
              FROM bid B JOIN side_input S ON B.auction % 10000 = S.key""",
    "q14": f"""SELECT auction, bidder, 0.908 * price AS price,
                 CASE WHEN hour(dateTime) >= 8 AND hour(dateTime) <= 18 THEN 'dayTime'
                      WHEN hour(dateTime) <= 6 OR hour(dateTime) >= 20 THEN 'nightTime'
                      ELSE 'otherTime' END AS bidTimeType,
                 dateTime, extra,
                 -- Sluice's count_char(extra, 'c') as built-in expressions
                 CAST(length(extra) - length(replace(extra, 'c', '')) AS BIGINT) AS c_counts
               FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000""",
    "q15": """SELECT window(dateTime, '1 day') AS day,
                count(*) AS total_bids,
                count(*) FILTER (WHERE price < 10000) AS rank1_bids,
                count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
                count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
                count(DISTINCT bidder) AS total_bidders,
                count(DISTINCT auction) AS total_auctions
              FROM bid GROUP BY window(dateTime, '1 day')""",
    "q16": """SELECT channel, window(dateTime, '1 day') AS day,
                count(*) AS total_bids,
                count(*) FILTER (WHERE price < 10000) AS rank1_bids,
                count(DISTINCT bidder) AS total_bidders,
                count(DISTINCT auction) AS total_auctions
              FROM bid GROUP BY channel, window(dateTime, '1 day')""",
    "q17": """SELECT auction, window(dateTime, '1 day') AS day,
                count(*) AS total_bids,
                count(*) FILTER (WHERE price < 10000) AS rank1_bids,
                min(price) AS min_price, max(price) AS max_price,
                avg(price) AS avg_price, sum(price) AS sum_price
              FROM bid GROUP BY auction, window(dateTime, '1 day')""",
    "q18": """SELECT auction, bidder, price, channel, url, dateTime, extra, w FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY w, bidder, auction
                                             ORDER BY dateTime DESC, price DESC, extra DESC) AS rank_number
                FROM (SELECT *, window(dateTime, '2 seconds') AS w FROM bid) B) T
              WHERE rank_number <= 1""",
    "q19": """SELECT auction, bidder, price, channel, url, dateTime, extra, w, rank_number FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY w, auction ORDER BY price DESC, dateTime, extra) AS rank_number
                FROM (SELECT *, window(dateTime, '2 seconds') AS w FROM bid) B) T
              WHERE rank_number <= 10""",
    "q20": """SELECT B.auction, B.bidder, B.price, B.channel, B.url, B.dateTime AS bid_time,
                B.extra AS bid_extra, A.itemName, A.description, A.initialBid, A.reserve,
                A.dateTime AS auction_time, A.expires, A.seller, A.category
              FROM bid B JOIN auction A ON B.auction = A.id
              WHERE A.category = 10""",
    # Spark's regexp_extract answers '' when the pattern does not match; Sluice's
    # regexp_match(...)[2] answers null: the RLIKE guard gives the null.
    "q21": f"""SELECT auction, bidder, price, channel,
                 CASE WHEN lower(channel) = 'apple' THEN '0'
                      WHEN lower(channel) = 'google' THEN '1'
                      WHEN lower(channel) = 'facebook' THEN '2'
                      WHEN lower(channel) = 'baidu' THEN '3'
                      WHEN url RLIKE {CHANNEL_ID} THEN regexp_extract(url, {CHANNEL_ID}, 2)
                      END AS channel_id
               FROM bid
               WHERE url RLIKE {CHANNEL_ID}
                  OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """SELECT auction, bidder, price, channel,
                split_part(url, '/', 4) AS dir1, split_part(url, '/', 5) AS dir2,
                split_part(url, '/', 6) AS dir3
              FROM bid""",
}


def say(text):
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far (/proc/<pid>/stat, all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("query", choices=sorted(QUERIES))
    parser.add_argument("--data", required=True, help="directory with person/, auction/, bid/")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--watermark-delay", default="1 second")
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    spark = (
        SparkSession.builder.master("local[2]")
        .appName(f"sluice-nexmark-{args.query}")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.driver.bindAddress", "127.0.0.1")
        .config("spark.driver.host", "127.0.0.1")
        .getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    try:
        for table, schema in SCHEMAS.items():
            (
                spark.readStream.schema(schema)
                .option("maxFilesPerTrigger", 1)
                .option("mode", "FAILFAST")
                .json(os.path.join(args.data, table))
                .withWatermark("dateTime", args.watermark_delay)
                .createOrReplaceTempView(table)
            )
        side_input = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../nexmark/side_input.csv")
        spark.read.schema("key BIGINT, value STRING").option("header", True).csv(
            side_input
        ).createOrReplaceTempView("side_input")

        jvm_pid = spark._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getPid()
        cpu0 = cpu_seconds(jvm_pid)
        start = time.monotonic()
        try:
            query = (
                spark.sql(QUERIES[args.query])
                .writeStream.format("noop")
                .outputMode("append")
                .option("checkpointLocation", args.checkpoint)
                .trigger(availableNow=True)
                .start()
            )
        except AnalysisException as e:
            # The first sentence of Spark's reason, without the plan it appends.
            reason = " ".join(str(e).split()).split("; ")[0].split(" SQLSTATE")[0]
            say("UNSUPPORTED " + reason[:300])
            sys.exit(3)
        query.awaitTermination()
        seconds = time.monotonic() - start
        cpu = cpu_seconds(jvm_pid) - cpu0
        say(f"DONE seconds={seconds:.3f} cpu={cpu:.3f}")
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
