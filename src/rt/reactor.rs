//! A reactor: one epoll instance, and the sockets registered with it once,
//! edge-triggered, for input and output together.
//!
//! async-io registers each wait one-shot: every time a task waits for a
//! socket, the socket is armed again with `epoll_ctl`, which was a third of
//! the system calls per reply (see docs/architecture.md, "Threads"). Here a
//! socket is added when it is made and removed when it is dropped; in
//! between, each direction (input, output) counts the edges the kernel
//! reports. A task tries its read or write first, and waits only when the
//! socket said `WouldBlock`, until that direction's count has moved past
//! what it was before the try: an edge that came in between is never lost.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures::task::AtomicWaker;
use rustix::event::epoll::{self, EventData, EventFlags};
use rustix::event::{EventfdFlags, Timespec, eventfd};
use slab::Slab;

/// The key of the reactor's own notifier among the sockets' keys.
const NOTIFY_KEY: u64 = u64::MAX;
/// Events taken from the kernel per wait.
const EVENTS_PER_WAIT: usize = 1024;

/// One epoll instance and what is registered with it.
pub(crate) struct Reactor {
    epoll: OwnedFd,
    /// An eventfd, edge-triggered: each write to it ends a wait.
    notifier: OwnedFd,
    /// The registered sockets by key, and the registrations made so far.
    sources: Mutex<Sources>,
}

/// The registered sockets. A socket's epoll data is its slab key and its
/// registration's number: a key is reused once its socket is gone, and an
/// event the kernel reported for the old socket (taken by a wait on one
/// thread while another dropped it and registered a new one) must not count
/// for the new one.
#[derive(Default)]
struct Sources {
    slab: Slab<Arc<Source>>,
    registrations: u32,
}

/// A registered socket's readiness: the edges seen in each direction, and
/// the task waiting on it.
pub(crate) struct Source {
    reactor: Arc<Reactor>,
    key: usize,
    /// Which registration under `key` this is.
    registration: u32,
    input: Direction,
    output: Direction,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source").field("key", &self.key).finish()
    }
}

/// Which way a task waits on a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Way {
    /// For input (or the peer's close, or an error).
    In,
    /// For room to write (or an error).
    Out,
}

#[derive(Default)]
struct Direction {
    /// Edges reported so far (wrapping).
    edges: AtomicU32,
    /// The peer closed this direction, or the connection failed: every wait
    /// ends at once from then on. An edge is not enough: a read that took
    /// the last bytes before the peer's close leaves the close unread, and
    /// no edge follows it.
    ended: AtomicBool,
    /// The one task waiting for the next edge.
    waker: AtomicWaker,
}

/// What a reactor's turn fills and empties again, kept by its thread so that
/// no turn allocates.
pub(crate) struct Turn {
    events: Vec<epoll::Event>,
    wakers: Vec<Waker>,
}

impl Default for Turn {
    fn default() -> Turn {
        Turn {
            events: Vec::with_capacity(EVENTS_PER_WAIT),
            wakers: Vec::with_capacity(EVENTS_PER_WAIT),
        }
    }
}

impl Reactor {
    pub(crate) fn new() -> io::Result<Arc<Reactor>> {
        let epoll = epoll::create(epoll::CreateFlags::CLOEXEC)?;
        let notifier = eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        epoll::add(
            &epoll,
            &notifier,
            EventData::new_u64(NOTIFY_KEY),
            EventFlags::IN | EventFlags::ET,
        )?;
        Ok(Arc::new(Reactor {
            epoll,
            notifier,
            sources: Mutex::default(),
        }))
    }

    fn sources(&self) -> MutexGuard<'_, Sources> {
        // The table is consistent after every operation: a panic elsewhere
        // while it was locked leaves nothing half done.
        self.sources.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `fd` (non-blocking) for input and output, edge-triggered.
    pub(crate) fn register(self: &Arc<Self>, fd: BorrowedFd<'_>) -> io::Result<Arc<Source>> {
        let mut sources = self.sources();
        sources.registrations = sources.registrations.wrapping_add(1);
        let registration = sources.registrations;
        let entry = sources.slab.vacant_entry();
        let source = Arc::new(Source {
            reactor: self.clone(),
            key: entry.key(),
            registration,
            input: Direction::default(),
            output: Direction::default(),
        });
        epoll::add(
            &self.epoll,
            fd,
            EventData::new_u64(data(entry.key(), registration)),
            EventFlags::IN | EventFlags::OUT | EventFlags::RDHUP | EventFlags::ET,
        )?;
        entry.insert(source.clone());
        Ok(source)
    }

    /// Ends the current or the next [`turn`](Self::turn)'s wait.
    pub(crate) fn notify(&self) {
        // Fails only when the counter is full, and then a wait ends anyway.
        let _ = rustix::io::write(&self.notifier, &1u64.to_ne_bytes());
    }

    /// Waits for events (at most `timeout`; `None`: until one comes or a
    /// [`notify`](Self::notify)), calls `awake`, then counts each socket's
    /// edges and wakes the tasks waiting for them.
    pub(crate) fn turn(
        &self,
        turn: &mut Turn,
        timeout: Option<Duration>,
        awake: impl FnOnce(),
    ) -> io::Result<()> {
        turn.events.clear();
        let timeout = timeout.map(|t| Timespec {
            tv_sec: t.as_secs() as _,
            tv_nsec: t.subsec_nanos() as _,
        });
        let waited = epoll::wait(
            &self.epoll,
            rustix::buffer::spare_capacity(&mut turn.events),
            timeout.as_ref(),
        );
        awake();
        match waited {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(()),
            Err(e) => return Err(e.into()),
        }
        {
            let sources = self.sources();
            for event in &turn.events {
                let (flags, key) = (event.flags, event.data.u64());
                // The notifier's counter is never read: each write is an
                // edge of its own, and a turn is all that was asked for.
                let registration = (key >> 32) as u32;
                let Some(source) = (sources.slab.get((key & u64::from(u32::MAX)) as usize))
                    .filter(|source| key != NOTIFY_KEY && source.registration == registration)
                else {
                    continue;
                };
                let failed = EventFlags::HUP | EventFlags::ERR;
                let input_ended = flags.intersects(EventFlags::RDHUP | failed);
                if input_ended || flags.intersects(EventFlags::IN | EventFlags::PRI) {
                    source.input.edge(input_ended, &mut turn.wakers);
                }
                let output_ended = flags.intersects(failed);
                if output_ended || flags.intersects(EventFlags::OUT) {
                    source.output.edge(output_ended, &mut turn.wakers);
                }
            }
        }
        // Woken outside the lock: a waker may drop the last reference to a
        // task, and with it a socket that deregisters.
        for waker in turn.wakers.drain(..) {
            waker.wake();
        }
        Ok(())
    }

    /// Drops every waiting task's waker: a task that nothing else holds is
    /// then dropped, and with it its sockets. For a reactor whose thread
    /// stops.
    pub(crate) fn forget_waiters(&self) {
        let wakers: Vec<Waker> = (self.sources().slab.iter())
            .flat_map(|(_, source)| [source.input.waker.take(), source.output.waker.take()])
            .flatten()
            .collect();
        drop(wakers);
    }
}

/// A socket's epoll data: its slab key (below 2^32: a key is at most the
/// number of sockets open at once) and its registration's number.
fn data(key: usize, registration: u32) -> u64 {
    (key as u64 & u64::from(u32::MAX)) | (u64::from(registration) << 32)
}

impl Direction {
    fn edge(&self, ended: bool, wakers: &mut Vec<Waker>) {
        if ended {
            self.ended.store(true, Ordering::SeqCst);
        }
        self.edges.fetch_add(1, Ordering::SeqCst);
        if let Some(waker) = self.waker.take() {
            wakers.push(waker);
        }
    }
}

impl Source {
    fn direction(&self, way: Way) -> &Direction {
        match way {
            Way::In => &self.input,
            Way::Out => &self.output,
        }
    }

    /// The edges seen so far in `way`: read it before trying the socket,
    /// and wait with [`poll_edge`](Self::poll_edge) if the try would block.
    pub(crate) fn edges(&self, way: Way) -> u32 {
        self.direction(way).edges.load(Ordering::SeqCst)
    }

    /// Ready once an edge in `way` came after `seen` edges, or that way has
    /// ended; else the task is woken by the next edge.
    pub(crate) fn poll_edge(&self, way: Way, seen: u32, cx: &mut Context<'_>) -> Poll<()> {
        let direction = self.direction(way);
        let moved = || {
            direction.edges.load(Ordering::SeqCst) != seen || direction.ended.load(Ordering::SeqCst)
        };
        if moved() {
            return Poll::Ready(());
        }
        direction.waker.register(cx.waker());
        if moved() {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    /// Removes `fd`, which this source was registered for, from the
    /// reactor; call it before `fd` closes.
    pub(crate) fn deregister(&self, fd: BorrowedFd<'_>) {
        let mut sources = self.reactor.sources();
        // It cannot fail for a registered, open descriptor; were it to, the
        // close that follows removes it from the epoll set anyway.
        let _ = epoll::delete(&self.reactor.epoll, fd);
        sources.slab.try_remove(self.key);
    }
}
