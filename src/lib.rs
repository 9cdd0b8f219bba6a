//! duplex: a TCP two-way messaging server and a self-healing client, built as
//! an actor system on async-std.
//!
//! Server: [`server::Server`] runs an acceptor actor that spawns one session
//! actor per client and registers it with a registry actor. Client:
//! [`client::run`] runs a supervisor actor that restarts a connection actor
//! after a backoff. [`bench::run`] load-tests any server that speaks the
//! protocol, which [`wire`] defines. See `docs/architecture.md` for the whole
//! picture.
//!
//! A program runs one of these inside [`block_on`], after
//! [`logging::init`], and stops it with a [`shutdown`] signal.

#![deny(missing_docs)]
#![warn(unreachable_pub)]

mod actors;
mod admin;
mod buffers;
mod messages;
mod net;
mod pending;
mod proxy;
mod rt;
mod tls;

pub mod bench;
pub mod client;
pub mod logging;
pub mod server;
pub mod shutdown;
pub mod wire;

pub use rt::run as block_on;
