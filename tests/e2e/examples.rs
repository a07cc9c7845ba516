//! The example programs in `queries/` run as they are on a real broker.

use std::time::Duration;

use serde_json::json;
use sluice_e2e::{consume_until, produce, unique, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_feed_turns_actions_into_notifications() {
    let server = TestServer::start().await;
    let (input, output) = (unique("user-activity"), unique("notifications"));
    let sql = include_str!("../../queries/activity_feed.sql")
        .replace("'user-activity'", &format!("'{input}'"))
        .replace("'notifications'", &format!("'{output}'"))
        .replace(
            "ACTIVITY_PER_USER",
            &unique("ACTIVITY_PER_USER").to_uppercase(),
        )
        .replace("activity_per_user", &unique("activity_per_user"));
    server.ok(&sql).await;
    let action = |user: &str, action: &str, target: &str, post: &str, ts: i64| {
        (
            Some(user.to_string()),
            json!({"user_id": user, "action": action, "target_user": target, "post_id": post, "ts": ts})
                .to_string(),
        )
    };
    produce(
        &input,
        &[
            action("alice", "post", "alice", "p-1", 1_000),
            action("bob", "like", "alice", "p-1", 2_000),
            action("alice", "like", "alice", "p-1", 2_500),
            (None, "{\"user_id\": ".to_string()),
            action("carol", "comment", "alice", "p-1", 3_000),
            action("bob", "share", "dave", "p-9", 4_000),
        ],
    )
    .await;
    let got = consume_until(&output, Duration::from_secs(60), |r| r.len() >= 3).await;
    let messages: Vec<(&str, &str)> = got
        .iter()
        .map(|c| {
            (
                c.value["recipient"].as_str().unwrap_or_default(),
                c.value["message"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        messages,
        vec![
            ("alice", "User bob liked Post p-1"),
            ("alice", "User carol commented on Post p-1"),
            ("dave", "User bob shared Post p-9"),
        ]
    );
    server.stop().await;
}
