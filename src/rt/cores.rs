//! The cores: a thread per core, each running its own tasks and its own
//! [`Reactor`], so a connection is accepted, served and woken on one thread
//! and no two cores share a queue or an epoll instance on the message path.
//!
//! A core runs what is queued (a bounded number of tasks per turn), then
//! takes events from its reactor: without waiting while tasks are queued,
//! else until an event comes. A task woken from another thread (a reply from
//! the registry, a timer) is queued on its own core, and the core is
//! notified only if it is waiting in the reactor.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use std::thread::JoinHandle;
use std::time::Duration;

use async_task::{Runnable, Task};
use concurrent_queue::ConcurrentQueue;
use kv_log_macro::error;

use super::reactor::{Reactor, Turn};

/// Tasks a core runs before it looks at its reactor again, so that sockets
/// with input are not kept waiting behind a long queue.
const TASKS_PER_TURN: usize = 128;

/// Most threads `--threads` may ask for.
pub const MAX_THREADS: usize = 1024;

/// One core's thread state, shared with whoever schedules its tasks.
pub(crate) struct Core {
    reactor: Arc<Reactor>,
    queue: ConcurrentQueue<Runnable>,
    /// The thread is waiting (or about to wait) in its reactor, so a task
    /// scheduled from elsewhere must notify it.
    waiting: AtomicBool,
    stopping: AtomicBool,
}

thread_local! {
    /// The core this thread runs, if it is one.
    static CURRENT: RefCell<Option<Arc<Core>>> = const { RefCell::new(None) };
}

/// The core the calling thread runs, if it is a core's thread.
pub(crate) fn current() -> Option<Arc<Core>> {
    CURRENT.with(|current| current.borrow().clone())
}

impl Core {
    /// This core's reactor, where its sockets register.
    pub(crate) fn reactor(&self) -> &Arc<Reactor> {
        &self.reactor
    }

    /// Spawns `future` as a task of this core.
    pub(crate) fn spawn<F>(self: &Arc<Self>, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let core = self.clone();
        let (runnable, task) = async_task::spawn(future, move |runnable| core.schedule(runnable));
        runnable.schedule();
        task
    }

    fn schedule(&self, runnable: Runnable) {
        // A stopped core's queue is closed: the runnable comes back and is
        // dropped here, which drops its future.
        if self.queue.push(runnable).is_ok() {
            fence(Ordering::SeqCst);
            if self.waiting.swap(false, Ordering::SeqCst) {
                self.reactor.notify();
            }
        }
    }

    fn run(self: Arc<Self>) {
        CURRENT.with(|current| *current.borrow_mut() = Some(self.clone()));
        let mut turn = Turn::default();
        while !self.stopping.load(Ordering::SeqCst) {
            for _ in 0..TASKS_PER_TURN {
                let Ok(runnable) = self.queue.pop() else {
                    break;
                };
                // A task's panic ends that task only (its `Task` handle
                // reports it), never the core serving everyone else.
                if catch_unwind(AssertUnwindSafe(|| runnable.run())).is_err() {
                    error!("a task panicked; its core goes on");
                }
            }
            // Waiting is announced only before a wait that may block: a task
            // scheduled from elsewhere while the core just polls needs no
            // notification. The queue is checked again after the
            // announcement, so a task pushed in between is not slept on.
            let idle = self.queue.is_empty() && {
                self.waiting.store(true, Ordering::SeqCst);
                fence(Ordering::SeqCst);
                self.queue.is_empty() && !self.stopping.load(Ordering::SeqCst)
            };
            let timeout = if idle { None } else { Some(Duration::ZERO) };
            // Awake before the wakers run: a task woken here is queued
            // without a notification.
            let turned = (self.reactor).turn(&mut turn, timeout, || {
                self.waiting.store(false, Ordering::SeqCst);
            });
            if let Err(e) = turned {
                // Not seen in practice (EINTR is retried): the kernel refusing
                // a wait on a valid epoll descriptor. Back off, not spin.
                error!("reactor wait failed", { error: log::kv::Value::from_display(&e) });
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        self.queue.close();
        while let Ok(runnable) = self.queue.pop() {
            drop(runnable);
        }
        self.reactor.forget_waiters();
        CURRENT.with(|current| current.borrow_mut().take());
    }
}

/// A thread per core, each with its queue of tasks and its reactor. Dropped,
/// it stops them and waits for them: tasks still queued or waiting then are
/// dropped.
pub(crate) struct Cores {
    cores: Vec<Arc<Core>>,
    threads: Vec<JoinHandle<()>>,
    /// The core the next [`spawn`](Self::spawn) goes to.
    next: AtomicUsize,
}

impl Cores {
    /// Starts `count` core threads (at least one) named `duplex-core-N`.
    pub(crate) fn start(count: usize) -> io::Result<Cores> {
        let mut cores = Cores {
            cores: Vec::new(),
            threads: Vec::new(),
            next: AtomicUsize::new(0),
        };
        // On an error, dropping `cores` stops the threads started so far.
        for index in 0..count.clamp(1, MAX_THREADS) {
            let core = Arc::new(Core {
                reactor: Reactor::new()?,
                queue: ConcurrentQueue::unbounded(),
                waiting: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
            });
            let runs = core.clone();
            let thread = std::thread::Builder::new()
                .name(format!("duplex-core-{index}"))
                .spawn(move || runs.run())?;
            cores.cores.push(core);
            cores.threads.push(thread);
        }
        Ok(cores)
    }

    /// How many cores there are.
    pub(crate) fn len(&self) -> usize {
        self.cores.len()
    }

    /// Spawns `future` on core `index` (modulo the number of cores).
    pub(crate) fn spawn_on<F>(&self, index: usize, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.cores[index % self.cores.len()].spawn(future)
    }

    /// Spawns `future` on the next core in turn.
    pub(crate) fn spawn<F>(&self, future: F) -> Task<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.spawn_on(self.next.fetch_add(1, Ordering::Relaxed), future)
    }
}

impl Drop for Cores {
    fn drop(&mut self) {
        for core in &self.cores {
            core.stopping.store(true, Ordering::SeqCst);
            core.reactor.notify();
        }
        let here = std::thread::current().id();
        for thread in self.threads.drain(..) {
            // A core's thread catches its tasks' panics; it cannot panic
            // itself. One never waits for itself (dropped by its own task).
            if thread.thread().id() != here {
                let _ = thread.join();
            }
        }
    }
}

impl std::fmt::Debug for Cores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cores")
            .field("len", &self.cores.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::*;
    use crate::rt::{ReadLoop, Socket, within};

    const PATIENCE: Duration = Duration::from_secs(10);

    #[async_std::test]
    async fn a_task_woken_from_another_thread_runs_on_a_waiting_core() {
        let cores = Cores::start(2).expect("start");
        let (sender, receiver) = futures::channel::oneshot::channel::<u32>();
        let task = cores.spawn_on(1, async move { receiver.await.expect("sent") + 1 });
        // The core is waiting in its reactor by now, or soon: either way the
        // send below must reach it.
        std::thread::spawn(move || sender.send(41).expect("task alive"));
        assert_eq!(within(PATIENCE, task).await, Some(42));
    }

    #[async_std::test]
    async fn a_panicking_task_ends_alone_and_its_core_goes_on() {
        let cores = Cores::start(1).expect("start");
        let panicked = cores.spawn_on(0, async { panic!("on purpose") });
        let panicked = std::panic::AssertUnwindSafe(panicked);
        let outcome = futures::FutureExt::catch_unwind(panicked).await;
        assert!(outcome.is_err(), "the panic reaches the task's handle");
        assert_eq!(
            within(PATIENCE, cores.spawn_on(0, async { 7 })).await,
            Some(7)
        );
    }

    #[async_std::test]
    async fn a_close_right_behind_the_last_bytes_ends_the_wait_for_input() {
        // Bytes and the close come together: the read that takes the bytes
        // is short, and no edge follows for the close it left unread.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut peer = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        peer.write_all(b"last words\n").expect("write");
        drop(peer);
        let cores = Cores::start(1).expect("start");
        let read = cores.spawn_on(0, async move {
            let socket = Socket::new(ours).expect("register");
            let mut reads = ReadLoop::new();
            let mut got = Vec::new();
            loop {
                reads.ready(&socket).await;
                let seen = socket.input_edges();
                let mut buf = [0u8; 64];
                match (&mut socket.get_ref()).read(&mut buf) {
                    Ok(0) => return got,
                    Ok(n) => {
                        got.extend_from_slice(&buf[..n]);
                        reads.record(n, buf.len(), seen);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        reads.record(0, buf.len(), seen);
                    }
                    Err(e) => panic!("read failed: {e}"),
                }
            }
        });
        let got = within(PATIENCE, read).await.expect("the close was seen");
        assert_eq!(got, b"last words\n");
    }

    #[async_std::test]
    async fn stopping_the_cores_drops_the_tasks_still_waiting_and_their_sockets() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut peer = TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        let cores = Cores::start(1).expect("start");
        cores
            .spawn_on(0, async move {
                let socket = Socket::new(ours).expect("register");
                // Waits for input that never comes.
                ReadLoop::new().ready(&socket).await;
                unreachable!("no input was sent");
            })
            .detach();
        drop(cores);
        peer.set_read_timeout(Some(PATIENCE)).expect("timeout");
        let mut buf = [0u8; 1];
        assert_eq!(peer.read(&mut buf).expect("closed, not timed out"), 0);
    }

    #[async_std::test]
    async fn sockets_made_off_the_cores_wait_on_the_shared_reactor() {
        // This test's own task is on async-std, not on a core.
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("bound");
        let echo = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 5];
            stream.read_exact(&mut buf).expect("read");
            stream.write_all(&buf).expect("write");
        });
        let socket = within(PATIENCE, Socket::connect(addr))
            .await
            .expect("in time")
            .expect("connect");
        futures::AsyncWriteExt::write_all(&mut &socket, b"hello")
            .await
            .expect("write");
        let mut buf = [0u8; 5];
        let mut reader = &socket;
        let read = futures::AsyncReadExt::read_exact(&mut reader, &mut buf);
        within(PATIENCE, read)
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(&buf, b"hello");
        echo.join().expect("echo thread");
    }

    #[async_std::test]
    async fn a_refused_connect_fails_with_the_kernels_error() {
        let addr = TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("bound");
        // The listener is gone: nothing listens there now.
        let connect = within(PATIENCE, Socket::connect(addr))
            .await
            .expect("in time");
        let error = connect.expect_err("refused");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionRefused);
    }
}
