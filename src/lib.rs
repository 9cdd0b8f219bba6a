//! duplex: a TCP two-way messaging server and a self-healing client, built as
//! an actor system on async-std.
//!
//! Server: [`server::Server`] runs an acceptor actor that spawns one session
//! actor per client and registers it with a registry actor. Client:
//! [`client::run`] runs a supervisor actor that restarts a connection actor
//! after a backoff. See `docs/architecture.md`.

pub mod actors;
pub mod bench;
pub mod cli;
pub mod client;
pub mod limits;
pub mod logging;
pub mod messages;
pub mod pending;
pub mod rt;
pub mod server;
pub mod shutdown;
pub mod signals;
pub mod wire;
