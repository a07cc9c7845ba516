//! Black-box tests: the real server over HTTP against the real Kafka broker from
//! `scripts/kafka-local`. Streaming results are compared with DataFusion running the same
//! computation as a batch query over the same (good) events.

mod crash;
mod differential;
mod examples;
mod inserts;
mod outage;
mod process;
mod pull_queries;
mod push_queries;
mod read_back;
mod rest_api;
mod restart;
mod shell;
mod streams;
mod tables;
mod third_party_client;
mod windows;
