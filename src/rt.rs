//! The runtime seam: every async-std item the crate uses is imported here and
//! nowhere else, so moving to smol (same executor and reactor underneath) is a
//! change to this one file.
//!
//! Two runtimes of one family run side by side. The actors (the registry,
//! the client's supervisor and connection, signals, timers) run on
//! async-std. Connections run on the [`Cores`]: a thread per core with its
//! own task queue (async-task, as async-executor uses) and its own epoll
//! instance, where a socket is registered once, edge-triggered
//! ([`reactor`]), instead of async-io's re-arming on every wait. A socket
//! made off the cores (by the client, or a test) registers with one shared
//! reactor thread instead. Sessions never leave the core that accepted them.

#[cfg(not(target_os = "linux"))]
compile_error!("duplex's reactor is epoll: it builds for Linux only");

mod cores;
mod reactor;
mod socket;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{FusedFuture, poll_fn};

pub(crate) use async_std::channel::{Receiver, Sender, bounded};
/// CPU work that would hold an executor thread for milliseconds (an admin
/// answer over 10 000 clients) runs on async-std's blocking pool instead.
pub(crate) use async_std::task::spawn_blocking;
pub(crate) use async_std::task::{JoinHandle, sleep, spawn};
pub(crate) use async_task::Task;
pub(crate) use cores::Cores;
pub use cores::MAX_THREADS;
pub(crate) use socket::{Listener, Socket};

/// The admin server's listener (`--admin-addr`), off the cores: on async-io's
/// reactor, which async-std's executor and timers run on, so that hyper's
/// connections (through smol-hyper) never share a core with a client.
pub(crate) type AdminListener = async_io::Async<std::net::TcpListener>;
/// An admin connection, accepted from an [`AdminListener`].
pub(crate) type AdminSocket = async_io::Async<std::net::TcpStream>;

/// Runs `future` as a detached task: on the calling thread's core if it is
/// one (a session stays on the core that accepted it), else on async-std's
/// executor, without the task-local storage async-std's [`spawn`] wraps
/// every task in (a task id, a name, a map of task locals: 40-odd bytes in
/// every idle client's cost; nothing in these tasks reads task locals).
pub(crate) fn spawn_detached<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match cores::current() {
        Some(core) => core.spawn(future).detach(),
        None => async_global_executor::spawn(future).detach(),
    }
}

/// Runs `future` as a task on the executor and parks the calling thread until
/// it is done: a program's entry point, for the server, the client or the
/// bench.
///
/// Not `async_std::task::block_on`: a thread blocked in that also takes turns
/// driving the reactor, and every socket event it picks up must then wake an
/// executor thread to run the task (a futex wake and a context switch per
/// message). Parked here, the main thread leaves the reactor to the executor
/// thread, which runs the woken tasks itself.
pub fn run<F>(future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    futures::executor::block_on(spawn(future))
}

/// Resolves `host:port` on a blocking-pool thread, with the resolver's own
/// error (async-std's `ToSocketAddrs` replaces it with a generic one).
pub(crate) async fn resolve(addr: &str) -> io::Result<Vec<std::net::SocketAddr>> {
    let addr = addr.to_owned();
    async_std::task::spawn_blocking(move || {
        std::net::ToSocketAddrs::to_socket_addrs(&addr).map(Iterator::collect)
    })
    .await
}

/// Completes at `deadline`, or never when there is none.
///
/// Actors race this against their inboxes and sockets, so a missing deadline
/// must simply never win the race.
pub(crate) async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep(at.saturating_duration_since(Instant::now())).await,
        None => futures::future::pending().await,
    }
}

/// Runs `fut` to completion unless it takes longer than `limit`.
pub(crate) async fn within<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
    async_std::future::timeout(limit, fut).await.ok()
}

/// A reusable timer: completes once the earliest deadline it was armed with
/// has passed, then disarms itself.
///
/// Re-arming only ever moves the deadline earlier, so an actor can arm it
/// with "idle since the last read" on every read at no cost: the timer keeps
/// its old (earlier) deadline, and when that fires the actor checks the real
/// one and re-arms. This keeps timer registrations off the per-message path.
pub(crate) struct Alarm {
    /// Its deadline and the timer for it, boxed: a disarmed alarm (every
    /// idle session's) is one null pointer.
    armed: Option<Box<(Instant, async_io::Timer)>>,
}

impl Alarm {
    /// A disarmed alarm: it never completes until armed.
    pub(crate) fn new() -> Alarm {
        Alarm { armed: None }
    }

    /// Arms the alarm for `deadline`, unless it is already armed for an
    /// earlier one.
    pub(crate) fn arm_by(&mut self, deadline: Instant) {
        if self.armed.as_ref().is_none_or(|armed| deadline < armed.0) {
            self.armed = Some(Box::new((deadline, async_io::Timer::at(deadline))));
        }
    }
}

impl Future for Alarm {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(armed) = self.armed.as_mut() else {
            return Poll::Pending;
        };
        match Pin::new(&mut armed.1).poll(cx) {
            Poll::Ready(_) => {
                self.armed = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl FusedFuture for Alarm {
    /// Never terminated for good: it can always be armed again.
    fn is_terminated(&self) -> bool {
        false
    }
}

/// The reads of a message loop on a [`Socket`]: after a read that emptied the
/// socket (it returned less than it had room for), the next one waits for
/// the reactor's next input edge instead of trying first, which would cost a
/// system call that returns nothing on nearly every message. A read that
/// fills its buffer reads on at once. The first read waits too: a connection
/// just opened seldom has input yet, and the reader borrows its buffer only
/// once there is some.
#[derive(Debug, Default)]
pub(crate) struct ReadLoop {
    /// The socket's input edges before the read that emptied it; `None`
    /// when the last read filled its buffer. Edge counts start at 0, so a
    /// new loop waits for the first edge.
    emptied_at: Option<u32>,
}

impl ReadLoop {
    /// A loop whose first read waits for input.
    pub(crate) fn new() -> ReadLoop {
        ReadLoop {
            emptied_at: Some(0),
        }
    }

    /// Completes when a read is worth trying: at once, unless the last read
    /// emptied the socket, then once input came after it. Dropped before it
    /// completes, it leaves the loop as it was.
    pub(crate) async fn ready(&self, socket: &Socket) {
        if let Some(seen) = self.emptied_at {
            poll_fn(|cx| socket.poll_input_since(seen, cx)).await;
        }
    }

    /// Records that a read into `room` bytes returned `n`, where `seen` is
    /// the socket's [`input_edges`](Socket::input_edges) from before the
    /// read.
    pub(crate) fn record(&mut self, n: usize, room: usize, seen: u32) {
        self.emptied_at = (n < room).then_some(seen);
    }
}
