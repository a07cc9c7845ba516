-- Activity feed: user actions become notifications for the user they concern.
--
-- Input: JSON actions on the `user-activity` topic, e.g.
--   {"user_id":"alice","action":"like","target_user":"bob","post_id":"p-17","ts":1764100000000}
-- Output:
--   NOTIFICATIONS       one message per like, comment or share, for the post's author:
--                       {"recipient":"bob","message":"User alice liked Post p-17", ...}
--   ACTIVITY_PER_USER   actions per user per hour (a windowed table, function spelling)

CREATE STREAM user_activity (
  user_id VARCHAR,
  action VARCHAR,
  target_user VARCHAR,
  post_id VARCHAR,
  ts BIGINT
) WITH (KAFKA_TOPIC='user-activity', VALUE_FORMAT='JSON', PARTITIONS=1, TIMESTAMP='ts');

CREATE STREAM notifications WITH (KAFKA_TOPIC='notifications') AS
  SELECT target_user AS recipient,
         'User ' || user_id || ' ' ||
           CASE action
             WHEN 'like' THEN 'liked'
             WHEN 'comment' THEN 'commented on'
             ELSE 'shared'
           END || ' Post ' || post_id AS message,
         action,
         ts
  FROM user_activity
  WHERE action IN ('like', 'comment', 'share') AND target_user <> user_id
  EMIT CHANGES;

CREATE TABLE activity_per_user AS
  SELECT user_id, window_start, window_end, COUNT(*) AS actions
  FROM user_activity
  GROUP BY user_id, TUMBLE(ts, INTERVAL '1' HOUR)
  EMIT CHANGES;
