//! What every Kafka client Sluice makes starts from.

use rdkafka::config::ClientConfig;

/// A client configuration for the cluster at `bootstrap_servers`.
///
/// The client connects to each broker it learns of as soon as it learns of it
/// (`enable.sparse.connections=false`) rather than when it first needs that broker.
/// librdkafka drops its bootstrap connection once the first metadata names the brokers,
/// so with sparse connections a new client's second request waited about 50 ms for a
/// fresh connection, and a transactional producer's search for its coordinator, when it
/// went out on the connection being dropped, waited 500 ms to be tried again: that was
/// half of a query's start. The cost: a client holds a connection to every broker,
/// where it would otherwise hold one to each broker it uses.
pub fn client_config(bootstrap_servers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap_servers)
        .set("enable.sparse.connections", "false");
    config
}
