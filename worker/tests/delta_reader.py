# Reads a Delta table with the `deltalake` Python package (delta-rs), as a Delta reader outside
# Sluice does; the Delta sink's tests compare its answers with the expected rows.
#
#   python delta_reader.py rows <uri> [version]      -> {"version", "files", "rows": [{col: value}]}
#   python delta_reader.py txn <uri> <appId>...      -> {appId: version or null}
#   python delta_reader.py counts <uri>              -> [rows at version 0, 1, ...]
#   python delta_reader.py watch <uri> <seconds>     -> [[version, rows], ...] read while a writer runs
#
# S3 settings come from the AWS_* variables (AWS_ENDPOINT_URL, AWS_ALLOW_HTTP, keys, region).
# Timestamps are printed as microseconds since the Unix epoch.
import datetime
import json
import os
import sys
import time

from deltalake import DeltaTable, QueryBuilder

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def storage_options():
    keys = ["AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_ALLOW_HTTP"]
    return {k: os.environ[k] for k in keys if k in os.environ}


def table(uri, version=None):
    return DeltaTable(uri, version=version, storage_options=storage_options())


def plain(value):
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.timezone.utc)
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    return value


def rows(dt):
    result = QueryBuilder().register("t", dt).execute("SELECT * FROM t").read_all()
    names = result.column_names
    columns = [result.column(n).to_pylist() for n in names]
    return [dict(zip(names, (plain(c[i]) for c in columns))) for i in range(result.num_rows)]


def count(dt):
    result = QueryBuilder().register("t", dt).execute("SELECT count(*) AS n FROM t").read_all()
    return result.column("n").to_pylist()[0]


def main():
    command, uri = sys.argv[1], sys.argv[2]
    if command == "rows":
        version = int(sys.argv[3]) if len(sys.argv) > 3 else None
        dt = table(uri, version)
        out = {"version": dt.version(), "files": len(dt.file_uris()), "rows": rows(dt)}
    elif command == "txn":
        dt = table(uri)
        out = {app: dt.transaction_version(app) for app in sys.argv[3:]}
    elif command == "counts":
        latest = table(uri).version()
        out = [count(table(uri, v)) for v in range(latest + 1)]
    elif command == "watch":
        deadline = time.monotonic() + float(sys.argv[3])
        out = []
        while time.monotonic() < deadline:
            try:
                dt = table(uri)
            except Exception:  # no table yet
                time.sleep(0.02)
                continue
            out.append([dt.version(), count(dt)])
            time.sleep(0.02)
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(out))


main()
