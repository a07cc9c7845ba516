"""Drive a Sluice server with the `ksqldb` client from PyPI, unchanged.

Usage: python ksqldb_python.py URL STREAM TOPIC TABLE
Prints one JSON object with what each client call returned; the Rust test
(tests/e2e/third_party_client.rs) checks it.
"""
import asyncio
import json
import sys
import time

from ksqldb import KSQLdbClient

url, stream, topic, table = sys.argv[1:5]
client = KSQLdbClient(url)
earliest = {"auto.offset.reset": "earliest"}
out = {}

out["create"] = client.ksql(
    f"CREATE STREAM {stream} (tx_id VARCHAR, card_id VARCHAR, amount DOUBLE, ts BIGINT) "
    f"WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1, TIMESTAMP='ts');"
)
out["ctas"] = client.ksql(
    f"CREATE TABLE {table} AS SELECT card_id, COUNT(*) AS n, SUM(amount) AS total "
    f"FROM {stream} GROUP BY card_id;",
    stream_properties=earliest,
)

# HTTP/2: /inserts-stream.
rows = [
    {"tx_id": f"t{i}", "card_id": f"card-{i % 3}", "amount": float(i), "ts": 1000 + i}
    for i in range(9)
]
out["inserts"] = client.inserts_stream(stream, rows)

# HTTP/2: a pull query, repeated until the table has seen every row.
deadline = time.time() + 60
while True:
    pull = client.query_sync(f"SELECT card_id, n, total FROM {table} ORDER BY card_id;")
    if sum(r[1] for r in pull[1:]) == 9 or time.time() > deadline:
        break
    time.sleep(0.5)
out["pull"] = pull


async def push_with_limit():
    return [
        item
        async for item in client.query_async(
            f"SELECT tx_id, amount FROM {stream} EMIT CHANGES LIMIT 3;",
            stream_properties=earliest,
            timeout=60,
        )
    ]


async def push_then_close():
    items = []
    async for item in client.query_async(
        f"SELECT tx_id FROM {stream} EMIT CHANGES;", stream_properties=earliest, timeout=60
    ):
        items.append(item)
        if len(items) == 1:
            closed = await asyncio.to_thread(client.close_query, item["queryId"])
            items.append({"closed": closed})
    return items


# HTTP/2: push queries; /close-query over HTTP/1.1.
out["push"] = asyncio.run(push_with_limit())
out["closed"] = asyncio.run(push_then_close())
print(json.dumps(out))
