//! The actors. Server side: [`acceptor`], [`session`] (one per client),
//! [`registry`]. Client side: [`supervisor`], [`connection`].
//! Every message between them is defined in [`crate::messages`].

pub(crate) mod acceptor;
pub(crate) mod connection;
pub(crate) mod registry;
pub(crate) mod session;
pub(crate) mod supervisor;
