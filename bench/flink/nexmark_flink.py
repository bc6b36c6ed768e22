"""Flink side of the Nexmark benchmark (bench/src/bench_nexmark.rs runs it; docs/bench.md).

Runs one Nexmark query of bench/nexmark/ in Flink SQL (PyFlink's TableEnvironment, streaming mode,
local MiniCluster in the gateway JVM) over the JSON-lines files the runner wrote
(<data>/<table>/part-*.json: the events of Sluice's `nexmark` source), into a `blackhole` sink.
Each query is the same computation as the Sluice manifest of that name (q5 and q7 in
nexmark/nexmark's join form, as Flink runs no OVER window without a time order on a stream).

Output on stdout, one line:

  DONE seconds=<s> cpu=<c>     seconds from job submission to its end (JVM and session start-up
                               excluded, in Flink's favour) and the gateway JVM's CPU seconds
                               over the same span (/proc/<pid>/stat user + system: every thread,
                               GC and JIT included; the MiniCluster runs in that JVM)

Settings that are not defaults, and why:
  parallelism.default=2              the 2 cores Sluice gets
  table.local-time-zone=UTC          event times are UTC instants (TIMESTAMP_LTZ)
  taskmanager.memory.process.size    1g: enough for these queries; left at the default, the
                                     MiniCluster sizes itself from the machine
"""

import argparse
import os
import sys
import time

from pyflink.java_gateway import get_gateway
from pyflink.table import EnvironmentSettings, TableEnvironment

TABLES = {
    "person": """id BIGINT, name STRING, emailAddress STRING, creditCard STRING, city STRING,
                 state STRING, `dateTime` TIMESTAMP_LTZ(3), extra STRING""",
    "auction": """id BIGINT, itemName STRING, description STRING, initialBid BIGINT,
                  reserve BIGINT, `dateTime` TIMESTAMP_LTZ(3), expires TIMESTAMP_LTZ(3),
                  seller BIGINT, category BIGINT, extra STRING""",
    "bid": """auction BIGINT, bidder BIGINT, price BIGINT, channel STRING, url STRING,
              `dateTime` TIMESTAMP_LTZ(3), extra STRING""",
}

DAY = "TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '1' DAY))"

# Each query as its Sluice manifest computes it (bench/nexmark/<name>.yaml).
QUERIES = {
    "q0": "SELECT auction, bidder, price, `dateTime`, extra FROM bid",
    "q1": "SELECT auction, bidder, 0.908 * price AS price, `dateTime`, extra FROM bid",
    "q2": "SELECT auction, price FROM bid WHERE MOD(auction, 123) = 0",
    "q3": """SELECT P.name, P.city, P.state, A.id
             FROM auction A JOIN person P ON A.seller = P.id
             WHERE A.category = 10 AND (P.state = 'OR' OR P.state = 'ID' OR P.state = 'CA')""",
    "q4": """SELECT Q.category, avg(Q.final) AS avg_final
             FROM (SELECT max(B.price) AS final, A.category
                   FROM auction A JOIN bid B
                     ON A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires
                   GROUP BY A.id, A.category) Q
             GROUP BY Q.category""",
    # q5 and q7 as nexmark/nexmark's Flink SQL: the windowed counts (maxima) joined with their
    # per-window max (Flink runs no OVER window without a time order on a stream).
    "q5": """SELECT AuctionBids.auction, AuctionBids.num FROM (
               SELECT auction, count(*) AS num, window_start AS starttime, window_end AS endtime
               FROM TABLE(HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
               GROUP BY auction, window_start, window_end) AS AuctionBids
             JOIN (
               SELECT max(CountBids.num) AS maxn, CountBids.starttime, CountBids.endtime FROM (
                 SELECT count(*) AS num, window_start AS starttime, window_end AS endtime
                 FROM TABLE(HOP(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND, INTERVAL '10' SECOND))
                 GROUP BY auction, window_start, window_end) AS CountBids
               GROUP BY CountBids.starttime, CountBids.endtime) AS MaxBids
             ON AuctionBids.starttime = MaxBids.starttime AND AuctionBids.endtime = MaxBids.endtime
                AND AuctionBids.num >= MaxBids.maxn""",
    "q7": """SELECT B.auction, B.price, B.bidder, B.`dateTime`, B.extra
             FROM bid B
             JOIN (SELECT max(price) AS maxprice, window_end AS `dateTime`
                   FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
                   GROUP BY window_start, window_end) B1
             ON B.price = B1.maxprice
             WHERE B.`dateTime` BETWEEN B1.`dateTime` - INTERVAL '10' SECOND AND B1.`dateTime`""",
    "q8": """SELECT P.id, P.name, A.reserve
             FROM person P JOIN auction A
               ON P.id = A.seller
              AND A.`dateTime` BETWEEN P.`dateTime` AND P.`dateTime` + INTERVAL '10' SECOND""",
    "q9": """SELECT id, itemName, seller, category, price, bidder FROM (
               SELECT A.id, A.itemName, A.seller, A.category, B.price, B.bidder,
                 ROW_NUMBER() OVER (PARTITION BY A.id ORDER BY B.price DESC, B.`dateTime` ASC) AS rownum
               FROM auction A JOIN bid B
                 ON A.id = B.auction AND B.`dateTime` BETWEEN A.`dateTime` AND A.expires) W
             WHERE rownum <= 1""",
    "q11": """SELECT bidder, count(*) AS bid_count, window_start, window_end
              FROM TABLE(SESSION(TABLE bid PARTITION BY bidder, DESCRIPTOR(`dateTime`), INTERVAL '10' SECOND))
              GROUP BY bidder, window_start, window_end""",
    # Flink 2's filesystem connector is no lookup source ("Processing-time temporal join is not
    # supported yet"), so the nexmark/nexmark form FOR SYSTEM_TIME AS OF is a regular join here:
    # the same rows for a static side input, with the side input held in join state.
    "q13": """SELECT B.auction, B.bidder, B.price, B.`dateTime`, S.`value`
              FROM bid B JOIN side_input S ON MOD(B.auction, 10000) = S.`key`""",
    "q14": """SELECT auction, bidder, 0.908 * price AS price,
                CASE WHEN HOUR(`dateTime`) >= 8 AND HOUR(`dateTime`) <= 18 THEN 'dayTime'
                     WHEN HOUR(`dateTime`) <= 6 OR HOUR(`dateTime`) >= 20 THEN 'nightTime'
                     ELSE 'otherTime' END AS bidTimeType,
                `dateTime`, extra,
                -- nexmark-flink's count_char UDF, as built-in expressions (no Java UDF jar here)
                CAST(CHAR_LENGTH(extra) - CHAR_LENGTH(REPLACE(extra, 'c', '')) AS BIGINT) AS c_counts
              FROM bid WHERE 0.908 * price > 1000000 AND 0.908 * price < 50000000""",
    "q15": f"""SELECT window_start AS `day`,
                 count(*) AS total_bids,
                 count(*) FILTER (WHERE price < 10000) AS rank1_bids,
                 count(*) FILTER (WHERE price >= 10000 AND price < 1000000) AS rank2_bids,
                 count(*) FILTER (WHERE price >= 1000000) AS rank3_bids,
                 count(DISTINCT bidder) AS total_bidders,
                 count(DISTINCT auction) AS total_auctions
               FROM {DAY} GROUP BY window_start, window_end""",
    "q16": f"""SELECT channel, window_start AS `day`,
                 count(*) AS total_bids,
                 count(*) FILTER (WHERE price < 10000) AS rank1_bids,
                 count(DISTINCT bidder) AS total_bidders,
                 count(DISTINCT auction) AS total_auctions
               FROM {DAY} GROUP BY channel, window_start, window_end""",
    "q17": f"""SELECT auction, window_start AS `day`,
                 count(*) AS total_bids,
                 count(*) FILTER (WHERE price < 10000) AS rank1_bids,
                 min(price) AS min_price, max(price) AS max_price,
                 avg(price) AS avg_price, sum(price) AS sum_price
               FROM {DAY} GROUP BY auction, window_start, window_end""",
    # Flink's Window Top-N over a 2-second tumbling window, as the Sluice manifests (q18 with N = 1).
    "q18": """SELECT auction, bidder, price, channel, url, `dateTime`, extra, window_start, window_end FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, bidder, auction
                                             ORDER BY `dateTime` DESC, price DESC, extra DESC) AS rank_number
                FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND))) T
              WHERE rank_number <= 1""",
    "q19": """SELECT auction, bidder, price, channel, url, `dateTime`, extra, window_start, window_end, rank_number FROM (
                SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end, auction
                                             ORDER BY price DESC, `dateTime`, extra) AS rank_number
                FROM TABLE(TUMBLE(TABLE bid, DESCRIPTOR(`dateTime`), INTERVAL '2' SECOND))) T
              WHERE rank_number <= 10""",
    "q20": """SELECT B.auction, B.bidder, B.price, B.channel, B.url, B.`dateTime` AS bid_time, B.extra AS bid_extra,
                A.itemName, A.description, A.initialBid, A.reserve, A.`dateTime` AS auction_time, A.expires, A.seller, A.category
              FROM bid B JOIN auction A ON B.auction = A.id
              WHERE A.category = 10""",
    "q21": """SELECT auction, bidder, price, channel,
                CASE WHEN lower(channel) = 'apple' THEN '0'
                     WHEN lower(channel) = 'google' THEN '1'
                     WHEN lower(channel) = 'facebook' THEN '2'
                     WHEN lower(channel) = 'baidu' THEN '3'
                     ELSE REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2) END AS channel_id
              FROM bid
              WHERE REGEXP_EXTRACT(url, '(&|^)channel_id=([^&]*)', 2) IS NOT NULL
                 OR lower(channel) IN ('apple', 'google', 'facebook', 'baidu')""",
    "q22": """SELECT auction, bidder, price, channel,
                SPLIT_INDEX(url, '/', 3) AS dir1, SPLIT_INDEX(url, '/', 4) AS dir2,
                SPLIT_INDEX(url, '/', 5) AS dir3
              FROM bid""",
}


def cpu_seconds(pid):
    """User + system CPU seconds of process `pid` so far (/proc/<pid>/stat, all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("query", choices=sorted(QUERIES))
    parser.add_argument("--data", required=True, help="directory with person/, auction/, bid/")
    parser.add_argument("--parallelism", type=int, default=2)
    parser.add_argument("--watermark-delay-ms", type=int, default=1000)
    args = parser.parse_args()

    settings = EnvironmentSettings.in_streaming_mode()
    env = TableEnvironment.create(settings)
    config = env.get_config()
    config.set("parallelism.default", str(args.parallelism))
    config.set("table.local-time-zone", "UTC")
    config.set("taskmanager.memory.process.size", "1g")
    config.set("rest.bind-address", "127.0.0.1")
    config.set("rest.address", "127.0.0.1")
    config.set("jobmanager.bind-host", "127.0.0.1")
    config.set("taskmanager.bind-host", "127.0.0.1")
    config.set("taskmanager.host", "127.0.0.1")

    for table, columns in TABLES.items():
        env.execute_sql(
            f"""CREATE TABLE {table} ({columns},
                  WATERMARK FOR `dateTime` AS `dateTime` - INTERVAL '{args.watermark_delay_ms / 1000:.3f}' SECOND)
                WITH ('connector' = 'filesystem', 'path' = '{args.data}/{table}',
                      'format' = 'json', 'json.timestamp-format.standard' = 'ISO-8601',
                      'json.fail-on-missing-field' = 'true')"""
        )
    # q13's side input: the CSV beside the Sluice manifests (its header row fails to parse as a
    # BIGINT key and is skipped).
    side_input = os.path.join(os.path.dirname(os.path.abspath(__file__)), "../nexmark/side_input.csv")
    env.execute_sql(
        f"""CREATE TABLE side_input (`key` BIGINT, `value` STRING)
            WITH ('connector' = 'filesystem', 'path' = '{side_input}', 'format' = 'csv',
                  'csv.ignore-parse-errors' = 'true')"""
    )
    result = env.sql_query(QUERIES[args.query])
    # The sink's columns are the result's (a rowtime attribute becomes a plain TIMESTAMP_LTZ).
    columns = ", ".join(
        f"`{c.getName()}` {c.getDataType().getLogicalType().asSerializableString()}"
        for c in result._j_table.getResolvedSchema().getColumns()
    )
    env.execute_sql(f"CREATE TABLE out_sink ({columns}) WITH ('connector' = 'blackhole')")

    jvm_pid = get_gateway().jvm.java.lang.management.ManagementFactory.getRuntimeMXBean().getPid()
    cpu0 = cpu_seconds(jvm_pid)
    start = time.monotonic()
    result.execute_insert("out_sink").wait()
    seconds = time.monotonic() - start
    cpu = cpu_seconds(jvm_pid) - cpu0
    sys.stdout.write(f"DONE seconds={seconds:.3f} cpu={cpu:.3f}\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
