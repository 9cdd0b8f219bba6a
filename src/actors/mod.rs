//! The actors. Server side: [`acceptor`], [`session`] (one per client),
//! [`registry`]. Client side: [`supervisor`], [`connection`].
//! Every message between them is defined in [`crate::messages`].

pub mod acceptor;
pub mod connection;
pub mod registry;
pub mod session;
pub mod supervisor;
