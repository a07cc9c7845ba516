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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fraud_detection_alerts_on_a_session_of_high_value_transactions() {
    let server = TestServer::start().await;
    let (input, alerts) = (unique("transactions"), unique("alerts"));
    let stream = unique("transactions");
    let sql = include_str!("../../queries/fraud_detection.sql")
        .replace("'transactions'", &format!("'{input}'"))
        .replace("'alerts'", &format!("'{alerts}'"))
        .replace("large_transactions", &unique("large_transactions"))
        .replace("fraud_alerts", &unique("fraud_alerts"))
        .replace("STREAM transactions", &format!("STREAM {stream}"))
        .replace("FROM transactions", &format!("FROM {stream}"));
    server.ok(&sql).await;
    let minute = 60_000;
    let base = 1_764_000_000_000i64;
    let tx = |card: &str, amount: f64, country: &str, ts: i64| {
        (
            Some(card.to_string()),
            json!({"tx_id": unique("t"), "card_id": card, "merchant": "Jeweller", "amount": amount, "country": country, "ts": ts})
                .to_string(),
        )
    };
    let mut records = vec![];
    for i in 0..4 {
        // Four of 1,500 two minutes apart: one session, 6,000 in total: an alert.
        records.push(tx(
            "card-stolen",
            1_500.0,
            ["DE", "BR", "SG", "US"][i],
            base + i as i64 * 2 * minute,
        ));
        // Four of 100: too small.
        records.push(tx("card-small", 100.0, "DE", base + i as i64 * minute));
        // Four of 1,500 ten minutes apart: four sessions, no alert.
        records.push(tx(
            "card-slow",
            1_500.0,
            "DE",
            base + i as i64 * 10 * minute,
        ));
    }
    // Three of 3,000: enough money, too few transactions.
    for i in 0..3 {
        records.push(tx("card-few", 3_000.0, "FR", base + i as i64 * minute));
    }
    // In event-time order, as a card network would deliver them.
    records.sort_by_key(|(_, v)| {
        serde_json::from_str::<serde_json::Value>(v).map_or(0, |v| v["ts"].as_i64().unwrap_or(0))
    });
    produce(&input, &records).await;
    let got = consume_until(&alerts, Duration::from_secs(60), |r| {
        r.iter().any(|c| c.value["tx_count"] == 4)
    })
    .await;
    let rows: Vec<&serde_json::Value> = got
        .iter()
        .map(|c| &c.value)
        .filter(|v| !v.is_null())
        .collect();
    assert!(!rows.is_empty(), "an alert arrives");
    assert!(
        rows.iter().all(|v| v["card_id"] == "card-stolen"),
        "only the stolen card alerts: {rows:?}"
    );
    let last = rows.last().expect("an alert");
    assert_eq!(last["tx_count"], 4);
    assert_eq!(last["total_amount"], 6_000.0);
    assert_eq!(last["countries"], 4);
    assert_eq!(last["session_start"], base);
    assert_eq!(last["session_end"], base + 6 * minute);
    assert_eq!(
        got.last()
            .and_then(|c| c.key.clone())
            .as_deref()
            .map(|k| k.contains("card-stolen")),
        Some(true)
    );
    server.stop().await;
}
