//! # sluice-server
//!
//! The Sluice server: statement execution ([`engine`]), persistent query lifecycle
//! ([`query`]), pull queries over materialized tables ([`pull_query`]), push queries
//! ([`push_query`]), topic
//! administration ([`topics`]) and the ksqlDB-compatible REST API ([`api`]). [`Server::start`] connects to Kafka (or starts the embedded broker) and
//! [`Server::serve`] answers HTTP on a listener until shutdown, so tests run it on port 0.

pub mod api;
pub mod command_log;
pub mod config;
pub mod engine;
pub mod error;
pub mod inserts;
pub mod pull_query;
pub mod push_query;
pub mod query;
pub mod request_body;
pub mod request_properties;
pub mod topics;

use std::future::Future;
use std::sync::Arc;

use sluice_stream_exec::EmbeddedBroker;
use tokio::net::TcpListener;
use tokio::sync::Mutex;

pub use config::ServerConfig;
pub use engine::Engine;
pub use error::ApiError;

/// A started server: the engine and, when embedded, the broker it owns.
#[derive(Debug)]
pub struct Server {
    state: api::AppState,
    /// Tells streaming requests that the server is shutting down.
    stop: Arc<tokio::sync::watch::Sender<bool>>,
    bootstrap_servers: String,
    embedded: Option<Arc<EmbeddedBroker>>,
}

impl Server {
    /// Connect to `config.bootstrap_servers`, or start the embedded broker when it is
    /// `None`.
    pub fn start(config: ServerConfig) -> Result<Self, ApiError> {
        std::fs::create_dir_all(&config.state_dir).map_err(|e| {
            ApiError::internal(format!(
                "cannot create the state directory {}: {e}",
                config.state_dir.display()
            ))
        })?;
        let embedded = match &config.bootstrap_servers {
            Some(_) => None,
            None => Some(Arc::new(
                EmbeddedBroker::start().map_err(|e| ApiError::internal(e.to_string()))?,
            )),
        };
        let bootstrap_servers = match (&config.bootstrap_servers, &embedded) {
            (Some(b), _) => b.clone(),
            (None, Some(e)) => e.bootstrap_servers().to_string(),
            (None, None) => unreachable!("embedded is set when no servers are given"),
        };
        let topics = topics::Topics::new(&bootstrap_servers, embedded.clone())?;
        let service_id = config.service_id.clone();
        let config_max_push = config.max_push_queries;
        let producer: rdkafka::producer::FutureProducer =
            sluice_stream_exec::query_runner::use_java_partitioner(
                sluice_stream_exec::kafka::client_config(&bootstrap_servers)
                    .set("acks", "all")
                    .set("allow.auto.create.topics", "false"),
            )
            .create()
            .map_err(|e| ApiError::internal(format!("cannot create a Kafka producer: {e}")))?;
        let engine = Engine::new(config, topics.clone());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        Ok(Self {
            state: api::AppState {
                engine: Arc::new(Mutex::new(engine)),
                service_id,
                embedded: embedded.is_some(),
                topics,
                pull_queries: Arc::new(pull_query::PullQueries::new()),
                push_queries: Arc::new(push_query::PushQueries::new(config_max_push)),
                producer,
                stopping,
            },
            stop: Arc::new(stop),
            bootstrap_servers,
            embedded,
        })
    }

    /// The Kafka bootstrap servers in use (the embedded broker's address when embedded).
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Whether the broker is the embedded, in-memory one.
    pub fn is_embedded(&self) -> bool {
        self.embedded.is_some()
    }

    /// The embedded broker, when there is one.
    pub fn embedded_broker(&self) -> Option<&Arc<EmbeddedBroker>> {
        self.embedded.as_ref()
    }

    /// The HTTP router.
    pub fn router(&self) -> axum::Router {
        api::app(self.state.clone())
    }

    /// The statement engine (for in-process callers such as `sluice demo`).
    pub fn engine(&self) -> Arc<Mutex<Engine>> {
        self.state.engine.clone()
    }

    /// Serve HTTP on `listener` until `shutdown` completes, then stop every query.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let engine = self.state.engine.clone();
        if !self.is_embedded() {
            // The embedded broker starts empty: there is nothing to restore.
            if let Err(e) = engine.lock().await.restore().await {
                tracing::error!(error = %e, "the catalog could not be restored from the command topic");
            }
        }
        let push_queries = self.state.push_queries.clone();
        let stop = self.stop.clone();
        // Push queries and inserts streams never end by themselves: stop them, so their
        // responses end and the graceful shutdown does not wait for their clients.
        let shutdown = async move {
            shutdown.await;
            let _ = stop.send(true);
            push_queries.close_all();
        };
        axum::serve(listener, self.router())
            .with_graceful_shutdown(shutdown)
            .await?;
        engine.lock().await.shutdown().await;
        drop(self.embedded);
        Ok(())
    }
}
