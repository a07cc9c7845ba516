-- Fraud detection over card transactions.
--
-- Input: JSON card transactions on the `transactions` topic, e.g.
--   {"tx_id":"t-1","card_id":"card-0042","merchant":"Grocer","amount":23.5,"country":"DE","ts":1764100000000}
-- Output:
--   LARGE_TRANSACTIONS  every transaction over 1,000 (a stream)
--   FRAUD_ALERTS        on the `alerts` topic: per card, a session of activity (no gap of
--                       5 minutes or more) with more than 3 transactions totalling more
--                       than 5,000 -- several high-value transactions in a short time. Each
--                       update of an alerting session is written; when a session grows or
--                       merges with another, its old row gets a tombstone (key, null value)

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

CREATE TABLE fraud_alerts WITH (KAFKA_TOPIC='alerts') AS
  SELECT card_id,
         WINDOWSTART AS session_start,
         WINDOWEND AS session_end,
         COUNT(*) AS tx_count,
         SUM(amount) AS total_amount,
         COUNT(DISTINCT country) AS countries,
         LATEST_BY_OFFSET(merchant) AS last_merchant
  FROM transactions
  WINDOW SESSION (5 MINUTES, GRACE PERIOD 1 MINUTE)
  GROUP BY card_id
  HAVING COUNT(*) > 3 AND SUM(amount) > 5000
  EMIT CHANGES;
