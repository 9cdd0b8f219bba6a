//! The runtime seam: every async-std item the crate uses is imported here and
//! nowhere else, so moving to smol (same executor and reactor underneath) is a
//! change to this one file.

use std::future::Future;
use std::time::{Duration, Instant};

pub use async_std::channel::{Receiver, Sender, TrySendError, bounded};
pub use async_std::future::timeout;
pub use async_std::net::{TcpListener, TcpStream, ToSocketAddrs};
pub use async_std::task::{JoinHandle, block_on, sleep, spawn};

/// Completes at `deadline`, or never when there is none.
///
/// Actors race this against their mailboxes and sockets, so a missing deadline
/// must simply never win the race.
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep(at.saturating_duration_since(Instant::now())).await,
        None => futures::future::pending().await,
    }
}

/// Runs `fut` to completion unless it takes longer than `limit`.
pub async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    timeout(limit, fut).await.ok()
}
