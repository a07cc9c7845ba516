-- Fraud detection over card transactions.
--
-- Input: JSON card transactions on the `transactions` topic, e.g.
--   {"tx_id":"t-1","card_id":"card-0042","merchant":"Grocer","amount":23.5,"country":"DE","ts":1764100000000}
-- Output:
--   LARGE_TRANSACTIONS  every transaction over 1,000 (a stream)
--   FRAUD_ALERTS        cards used 5 times or more, or for more than 3,000 in total,
--                       or in more than one country within one minute (a windowed table)

CREATE STREAM transactions (
  tx_id VARCHAR,
  card_id VARCHAR,
  merchant VARCHAR,
  amount DOUBLE,
  country VARCHAR,
  ts BIGINT
) WITH (KAFKA_TOPIC='transactions', VALUE_FORMAT='JSON', PARTITIONS=4, TIMESTAMP='ts');

CREATE STREAM large_transactions AS
  SELECT tx_id, card_id, merchant, amount, country
  FROM transactions
  WHERE amount > 1000
  EMIT CHANGES;

CREATE TABLE fraud_alerts AS
  SELECT card_id,
         WINDOWSTART AS window_start_ms,
         WINDOWEND AS window_end_ms,
         COUNT(*) AS tx_count,
         SUM(amount) AS total_amount,
         COUNT(DISTINCT country) AS countries
  FROM transactions
  WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 10 SECONDS)
  GROUP BY card_id
  HAVING COUNT(*) >= 5 OR SUM(amount) > 3000 OR COUNT(DISTINCT country) > 1
  EMIT CHANGES;
