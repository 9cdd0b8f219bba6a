//! The runtime seam: every async-std item the crate uses is imported here and
//! nowhere else, so moving to smol (same executor and reactor underneath) is a
//! change to this one file.
//!
//! Sockets are async-io's `Async` (the reactor async-std runs on, which smol
//! re-exports as `smol::Async`), because every message loop waits for
//! readiness: after a short read the socket is known to be empty, so the next
//! read would only return `WouldBlock`. async-std's `TcpStream` is the same
//! `Async` in an `Arc`, but it can only try that read first. [`ReadLoop`] is
//! that wait, and it lives here because it is shaped by how the reactor
//! reports readiness.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::{FusedFuture, poll_fn};

pub(crate) use async_std::channel::{Receiver, Sender, bounded};
pub(crate) use async_std::task::{JoinHandle, sleep, spawn};

/// Runs `future` on the executor as a detached task, without the task-local
/// storage async-std's [`spawn`] wraps every task in.
///
/// For the tasks the server has one of per client (sessions): async-std's
/// wrapper (a task id, a name, a map of task locals) would be in every idle
/// client's cost. Nothing in those tasks reads task locals. With smol this is `smol::spawn(future).detach()`.
pub(crate) fn spawn_detached<F>(future: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    async_global_executor::spawn(future).detach();
}

/// A listening socket on the reactor.
pub(crate) type Listener = async_io::Async<std::net::TcpListener>;
/// A TCP connection on the reactor itself. Read it through a [`ReadLoop`].
pub(crate) type Socket = async_io::Async<std::net::TcpStream>;

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
/// socket (it returned less than it had room for), the next one waits until
/// the socket may be readable instead of trying first, which would cost a
/// system call that returns nothing on nearly every message. A read that
/// fills its buffer reads on at once. The first read waits too: a connection
/// just opened seldom has input yet, and the reader borrows its buffer only
/// once there is some.
#[derive(Debug)]
pub(crate) struct ReadLoop {
    emptied: bool,
}

impl Default for ReadLoop {
    fn default() -> ReadLoop {
        ReadLoop { emptied: true }
    }
}

impl ReadLoop {
    /// Completes when a read is worth trying: at once, unless the last read
    /// emptied the socket, then when it may be readable. Dropped before it
    /// completes, it leaves the loop as it was.
    pub(crate) async fn ready(&self, socket: &Socket) -> io::Result<()> {
        if self.emptied {
            wait_for_input(socket).await?;
        }
        Ok(())
    }

    /// Records that a read into `room` bytes returned `n`.
    pub(crate) fn record(&mut self, n: usize, room: usize) {
        self.emptied = n < room;
    }
}

/// Registers interest in `socket`'s input, then finishes at the next wake-up,
/// whatever caused it: the read that follows is what tells whether input came
/// (if not, the caller waits again).
///
/// Why not `poll_readable` until it reports ready: the reactor's `epoll_wait`
/// often runs on one thread while a task runs on another, and an event from a
/// wait that began before the interest was registered counts as stale to
/// `poll_readable`. The task is woken, but told "not yet", and registers
/// again; the socket, still holding the message, is reported again at once:
/// a second `epoll_ctl`, event and wake-up per message whenever the two
/// threads overlap.
///
/// Not `readable()` either: that future registers and removes a waker of its
/// own on every wait. The read side's one waker slot, which reads use as well,
/// costs nothing to reuse, and the caller's task is its only user.
fn wait_for_input(socket: &Socket) -> impl Future<Output = io::Result<()>> + '_ {
    let mut registered = false;
    poll_fn(move |cx| {
        if registered {
            return Poll::Ready(Ok(()));
        }
        // The first answer may still be the event that the last read, made
        // without a look at readiness, consumed; the second registers.
        for _ in 0..2 {
            match socket.poll_readable(cx) {
                Poll::Pending => {
                    registered = true;
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {}
            }
        }
        Poll::Ready(Ok(()))
    })
}
