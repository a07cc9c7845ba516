//! The embedded broker: librdkafka's in-process mock cluster, so `sluice server` runs with
//! nothing else installed. It is in-memory and single-process: data is gone when the
//! server stops. The cluster lives on a thread of its own (its handle is not `Send`); the
//! rest of Sluice reaches it by its address like any broker, and creates topics through
//! [`EmbeddedBroker::create_topic`] because the mock cluster ignores CreateTopics requests.

use std::sync::mpsc;
use std::thread;

use rdkafka::mocking::MockCluster;

use crate::error::{ExecError, Result};

enum Command {
    CreateTopic {
        name: String,
        partitions: i32,
        reply: mpsc::Sender<Result<()>>,
    },
}

/// A running in-process broker; stops when dropped.
pub struct EmbeddedBroker {
    bootstrap_servers: String,
    commands: Option<mpsc::Sender<Command>>,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for EmbeddedBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedBroker")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .finish()
    }
}

impl EmbeddedBroker {
    /// Start a one-broker mock cluster on a loopback port.
    pub fn start() -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String>>();
        let (tx, rx) = mpsc::channel::<Command>();
        let thread = thread::Builder::new()
            .name("embedded-broker".into())
            .spawn(move || {
                let cluster = match MockCluster::new(1) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(ExecError::EmbeddedBroker(e.to_string())));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                while let Ok(command) = rx.recv() {
                    match command {
                        Command::CreateTopic {
                            name,
                            partitions,
                            reply,
                        } => {
                            let r = cluster.create_topic(&name, partitions, 1).map_err(|e| {
                                ExecError::EmbeddedBroker(format!("creating topic {name}: {e}"))
                            });
                            let _ = reply.send(r);
                        }
                    }
                }
            })
            .map_err(|e| ExecError::EmbeddedBroker(e.to_string()))?;
        let bootstrap_servers = ready_rx
            .recv()
            .map_err(|_| ExecError::EmbeddedBroker("the broker thread exited".into()))??;
        Ok(Self {
            bootstrap_servers,
            commands: Some(tx),
            thread: Some(thread),
        })
    }

    /// The address clients connect to, e.g. `127.0.0.1:40123`.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// Create `name` with `partitions` partitions (a no-op if it exists).
    pub fn create_topic(&self, name: &str, partitions: i32) -> Result<()> {
        let (reply, rx) = mpsc::channel();
        self.commands
            .as_ref()
            .ok_or_else(|| ExecError::EmbeddedBroker("the broker is stopped".into()))?
            .send(Command::CreateTopic {
                name: name.to_string(),
                partitions,
                reply,
            })
            .map_err(|_| ExecError::EmbeddedBroker("the broker thread exited".into()))?;
        rx.recv()
            .map_err(|_| ExecError::EmbeddedBroker("the broker thread exited".into()))?
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.commands.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
