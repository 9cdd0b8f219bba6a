//! The supervisor actor: keeps one connection actor alive, forever.
//!
//! Owns the ticker that makes a new message every interval (whether or not a
//! connection is up, so nothing is skipped while disconnected), the pending
//! queue while no connection holds it, the backoff policy and the restart
//! history. It starts a connection with a [`ConnectionStart`], forwards new
//! messages to it, and when the connection hands back its [`ConnectionExit`]
//! it logs why, waits the backoff and starts the next one.
//!
//! It stops when a connection reports `--count` replies, at shutdown, when
//! restarts exceed `--max-restarts` within `--restart-window` (OTP's restart
//! intensity), or when a few connections in a row find the server speaking
//! TLS to a client that does not (a configuration error, which no restart
//! mends), and logs a summary line on every exit.
//!
//! How a connection is started is injected ([`StartConnection`]), so tests can
//! supervise a child that fails on purpose.

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt, select_biased};
use kv_log_macro::{info, warn};
use log::kv::Value;
use rand::Rng;

use crate::messages::{ConnectionEnd, ConnectionExit, ConnectionMsg, ConnectionStart};
use crate::pending::PendingQueue;
use crate::rt::{bounded, sleep_until, spawn};
use crate::shutdown::Shutdown;

mod backoff;

use backoff::Backoff;

/// Capacity of a connection's inbox, in messages. The supervisor makes one per
/// interval, so the connection is never more than a few behind.
const CONNECTION_INBOX_CAPACITY: usize = 16;

/// Starts a connection actor and resolves to its exit.
pub(crate) type StartConnection =
    Box<dyn FnMut(ConnectionStart) -> BoxFuture<'static, ConnectionExit> + Send>;

/// The supervisor's part of the client's configuration; `Default` gives the
/// CLI's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SupervisorConfig {
    /// A new message every interval (`--interval`).
    pub interval: Duration,
    /// Delay before a restart, and the start of the growth when
    /// `backoff_max` is set (`--backoff`).
    pub backoff: Duration,
    /// Turns on exponential backoff, with jitter, up to this delay
    /// (`--backoff-max`).
    pub backoff_max: Option<Duration>,
    /// Give up after more restarts than this within `restart_window`;
    /// `None`: never (`--max-restarts`).
    pub max_restarts: Option<u32>,
    /// The window `max_restarts` counts restarts in (`--restart-window`).
    pub restart_window: Duration,
    /// Capacity of the pending queue (`--max-pending`).
    pub max_pending: usize,
    /// Stop after this many replies; `None`: run until shutdown (`--count`).
    pub count: Option<u64>,
}

impl Default for SupervisorConfig {
    fn default() -> SupervisorConfig {
        SupervisorConfig {
            interval: Duration::from_secs(2),
            backoff: Duration::from_secs(1),
            backoff_max: None,
            max_restarts: None,
            restart_window: Duration::from_secs(60),
            max_pending: 1000,
            count: None,
        }
    }
}

/// How the lines of a server that turns clients away start: "full"
/// (`wire::server_full_error`), and over a per-address limit
/// (`wire::TOO_MANY_FROM_ADDRESS_ERROR`, `wire::CONNECTING_TOO_FAST_ERROR`).
const TURNED_AWAY: [&str; 3] = [
    "error: server full",
    "error: too many connections from your address",
    "error: connecting too fast",
];

/// The longest wait between tries of a server that said it is full, when
/// `--backoff-max` does not say.
const FULL_BACKOFF_MAX: Duration = Duration::from_secs(30);

/// Connections in a row that find the server speaking TLS (to a client
/// without `--tls`) before the client stops: one or two could be a server
/// being changed over, three are the client's configuration.
const TLS_MISMATCHES_MAX: u32 = 3;

/// Why the supervisor stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// `--count` replies arrived.
    CountReached,
    /// Shut down by a signal (or the program's own trigger).
    Shutdown,
    /// More than `max_restarts` restarts within the window.
    GaveUp,
    /// The server speaks TLS and the client does not: on a few connections
    /// in a row (or on the last one `max_restarts` allowed).
    ServerSpeaksTls,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Outcome::CountReached => "count reached",
            Outcome::Shutdown => "shutdown",
            Outcome::GaveUp => "gave up: too many restarts",
            Outcome::ServerSpeaksTls => "gave up: the server speaks TLS",
        })
    }
}

/// What the client did, logged once on exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSummary {
    /// Why the client stopped.
    pub outcome: Outcome,
    /// Messages written for the first time.
    pub sent: u64,
    /// Replies received.
    pub replied: u64,
    /// Messages written again on a new connection.
    pub resent: u64,
    /// Messages dropped from a full pending queue.
    pub dropped: u64,
    /// Connections started after the first.
    pub reconnects: u64,
    /// Messages still unacknowledged at exit.
    pub pending: usize,
}

/// The supervisor's state.
pub(crate) struct Supervisor {
    config: SupervisorConfig,
    start_connection: StartConnection,
    /// `None` while a connection holds the queue.
    pending: Option<PendingQueue>,
    backoff: Backoff,
    /// The backoff after the server said it is full: exponential, up to
    /// `--backoff-max` (or `FULL_BACKOFF_MAX`), whatever `backoff` is.
    full_backoff: Backoff,
    restarts: VecDeque<Instant>,
    /// Connections in a row that found the server speaking TLS.
    tls_mismatches: u32,
    replied: u64,
    reconnects: u64,
    next_tick: Instant,
}

impl Supervisor {
    pub(crate) fn new(config: SupervisorConfig, start_connection: StartConnection) -> Supervisor {
        Supervisor {
            pending: Some(PendingQueue::new(config.max_pending)),
            backoff: Backoff::from_config(&config),
            full_backoff: Backoff::exponential(
                config.backoff,
                config.backoff_max.unwrap_or(FULL_BACKOFF_MAX),
            ),
            next_tick: Instant::now() + config.interval,
            config,
            start_connection,
            restarts: VecDeque::new(),
            tls_mismatches: 0,
            replied: 0,
            reconnects: 0,
        }
    }

    /// Supervises connections until the count is reached, shutdown, or giving up.
    pub(crate) async fn run(mut self, shutdown: Shutdown) -> ClientSummary {
        let outcome = loop {
            let exit = self.supervise_one(&shutdown).await;
            self.replied += exit.replied;
            let mut pending = exit.pending;
            match exit.end {
                ConnectionEnd::CountReached => {
                    self.pending = Some(pending);
                    break Outcome::CountReached;
                }
                ConnectionEnd::Shutdown => {
                    self.pending = Some(pending);
                    break Outcome::Shutdown;
                }
                _ => {}
            }
            if exit.replied > 0 {
                self.backoff.reset();
                self.full_backoff.reset();
            }
            // A configuration error, not a failure: said as such whatever
            // stops the client.
            let speaks_tls = matches!(exit.end, ConnectionEnd::ServerSpeaksTls);
            self.tls_mismatches = if speaks_tls {
                self.tls_mismatches + 1
            } else {
                0
            };
            if self.tls_mismatches >= TLS_MISMATCHES_MAX {
                self.pending = Some(pending);
                break Outcome::ServerSpeaksTls;
            }
            if self.restart_limit_exceeded() {
                self.pending = Some(pending);
                break if speaks_tls {
                    Outcome::ServerSpeaksTls
                } else {
                    Outcome::GaveUp
                };
            }
            // A server that said it is full (or its limit for this
            // address reached) is asked again less and less often.
            let delay = match &exit.end {
                ConnectionEnd::ServerClosed { said: Some(said) }
                    if TURNED_AWAY.iter().any(|line| said.starts_with(line)) =>
                {
                    self.full_backoff.next_delay()
                }
                _ => self.backoff.next_delay(),
            };
            info!("restarting connection", {
                reason: Value::from_display(&exit.end),
                backoff_ms: delay.as_millis() as u64,
                pending: pending.len(),
            });
            let deadline = Instant::now() + delay;
            let shut = loop {
                select_biased! {
                    _ = shutdown.wait().fuse() => break true,
                    _ = sleep_until(Some(deadline)).fuse() => break false,
                    _ = sleep_until(Some(self.next_tick)).fuse() => {
                        pending.push(self.make_message());
                    }
                }
            };
            self.pending = Some(pending);
            if shut {
                break Outcome::Shutdown;
            }
            self.reconnects += 1;
        };
        let pending = self.pending.take().unwrap_or_else(|| PendingQueue::new(1));
        let summary = ClientSummary {
            outcome,
            sent: pending.sent,
            replied: self.replied,
            resent: pending.resent,
            dropped: pending.dropped,
            reconnects: self.reconnects,
            pending: pending.len(),
        };
        let log_summary = |level| {
            kv_log_macro::log!(level, "client stopped", {
                outcome: Value::from_display(&summary.outcome),
                sent: summary.sent,
                replied: summary.replied,
                resent: summary.resent,
                dropped: summary.dropped,
                reconnects: summary.reconnects,
                pending: summary.pending,
            })
        };
        if matches!(outcome, Outcome::GaveUp | Outcome::ServerSpeaksTls) {
            log_summary(log::Level::Error);
        } else {
            log_summary(log::Level::Info);
        }
        summary
    }

    /// Starts one connection, feeds it new messages, and returns its exit.
    async fn supervise_one(&mut self, shutdown: &Shutdown) -> ConnectionExit {
        let (inbox_sender, inbox) = bounded(CONNECTION_INBOX_CAPACITY);
        let start = ConnectionStart {
            pending: self
                .pending
                .take()
                .expect("the supervisor holds the queue between connections"),
            inbox,
            replies_wanted: self
                .config
                .count
                .map(|count| count.saturating_sub(self.replied)),
            shutdown: shutdown.clone(),
        };
        let mut child = spawn((self.start_connection)(start)).fuse();
        // Messages made after the connection stopped reading its inbox.
        let mut unsent = Vec::new();
        let mut exit = loop {
            select_biased! {
                exit = child => break exit,
                _ = sleep_until(Some(self.next_tick)).fuse() => {
                    let text = self.make_message();
                    if let Err(refused) = inbox_sender.send(ConnectionMsg::Send { text }).await {
                        let ConnectionMsg::Send { text } = refused.into_inner();
                        unsent.push(text);
                    }
                }
            }
        };
        for text in unsent {
            exit.pending.push(text);
        }
        exit
    }

    /// A new random message; also schedules the next one.
    fn make_message(&mut self) -> String {
        self.next_tick += self.config.interval;
        // A long stall (suspended laptop) should not cause a burst of catch-up ticks.
        let now = Instant::now();
        if self.next_tick < now {
            self.next_tick = now + self.config.interval;
        }
        random_message()
    }

    /// Records a restart; whether that makes too many within the window.
    fn restart_limit_exceeded(&mut self) -> bool {
        let Some(max) = self.config.max_restarts else {
            return false;
        };
        let now = Instant::now();
        self.restarts.push_back(now);
        while self
            .restarts
            .front()
            .is_some_and(|&at| now.duration_since(at) > self.config.restart_window)
        {
            self.restarts.pop_front();
        }
        let exceeded = self.restarts.len() > max as usize;
        if exceeded {
            warn!("too many restarts: giving up", {
                restarts: self.restarts.len(),
                max_restarts: max,
                window_ms: self.config.restart_window.as_millis() as u64,
            });
        }
        exceeded
    }
}

/// 13 random lowercase hex digits, like the original client's
/// `Math.random().toString(16).slice(2)`.
fn random_message() -> String {
    // 52 random bits print as exactly 13 hex digits with zero padding.
    format!("{:013x}", rand::rng().random::<u64>() >> 12)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rt::{Receiver, Sender, within};
    use crate::shutdown;

    /// When a child was started and the pending messages it was handed.
    type Start = (Instant, Vec<String>);

    fn config(backoff: Duration) -> SupervisorConfig {
        SupervisorConfig {
            interval: Duration::from_millis(5),
            backoff,
            max_pending: 100,
            ..SupervisorConfig::default()
        }
    }

    /// A child that fails at once and reports each start.
    fn failing_child() -> (StartConnection, Receiver<Start>) {
        let (report, starts): (Sender<Start>, _) = bounded(1000);
        let start = Box::new(move |start: ConnectionStart| {
            let texts = start.pending.texts().map(String::from).collect();
            // The test reads at most 1000 starts; later ones need no report.
            let _ = report.try_send((Instant::now(), texts));
            async move {
                ConnectionExit {
                    end: ConnectionEnd::ServerClosed { said: None },
                    pending: start.pending,
                    replied: 0,
                }
            }
            .boxed()
        });
        (start, starts)
    }

    #[async_std::test]
    async fn a_failing_child_is_restarted_after_the_backoff_and_keeps_its_messages() {
        let backoff = Duration::from_millis(30);
        let (child, reports) = failing_child();
        let (trigger, shutdown) = shutdown::channel();
        let running = spawn(Supervisor::new(config(backoff), child).run(shutdown));
        let mut starts = Vec::new();
        for _ in 0..5 {
            let start = within(Duration::from_secs(5), reports.recv()).await;
            starts.push(start.expect("restarted within 5 s").expect("child reports"));
        }
        trigger.trigger();
        let summary = running.await;
        assert_eq!(summary.outcome, Outcome::Shutdown);
        assert!(summary.reconnects >= 4);
        for pair in starts.windows(2) {
            assert!(
                pair[1].0 - pair[0].0 >= backoff,
                "restarted before the backoff"
            );
            // Messages made while disconnected are handed over, in order, and kept.
            assert!(pair[1].1.starts_with(&pair[0].1));
        }
        assert!(!starts.last().expect("started").1.is_empty());
    }

    #[async_std::test]
    async fn too_many_restarts_in_the_window_gives_up() {
        let mut config = config(Duration::from_millis(1));
        config.max_restarts = Some(3);
        let (child, reports) = failing_child();
        let supervisor = Supervisor::new(config, child);
        let summary = within(Duration::from_secs(5), supervisor.run(Shutdown::never()))
            .await
            .expect("gives up quickly");
        assert_eq!(summary.outcome, Outcome::GaveUp);
        assert_eq!(reports.len(), 4);
    }

    /// A child that ends as `ends` says, start after start (then
    /// `ServerSpeaksTls` for ever), and reports how many starts there were.
    fn scripted_child(ends: Vec<fn() -> ConnectionEnd>) -> (StartConnection, Receiver<()>) {
        let (report, starts) = bounded(1000);
        let mut started = 0;
        let start = Box::new(move |start: ConnectionStart| {
            let end = ends
                .get(started)
                .map_or(ConnectionEnd::ServerSpeaksTls, |end| end());
            started += 1;
            // The test counts at most 1000 starts.
            let _ = report.try_send(());
            async move {
                ConnectionExit {
                    end,
                    pending: start.pending,
                    replied: 0,
                }
            }
            .boxed()
        });
        (start, starts)
    }

    #[async_std::test]
    async fn a_server_speaking_tls_three_times_in_a_row_stops_the_client() {
        fn tls() -> ConnectionEnd {
            ConnectionEnd::ServerSpeaksTls
        }
        fn refused() -> ConnectionEnd {
            ConnectionEnd::Connect(std::io::ErrorKind::ConnectionRefused.into())
        }
        // Twice, then a server down in between: counted again from there.
        let (child, starts) = scripted_child(vec![tls, tls, refused]);
        let supervisor = Supervisor::new(config(Duration::from_millis(1)), child);
        let summary = within(Duration::from_secs(5), supervisor.run(Shutdown::never()))
            .await
            .expect("stops by itself");
        assert_eq!(summary.outcome, Outcome::ServerSpeaksTls);
        assert_eq!(starts.len(), 6);
        // With a restart limit that comes first, it still says why.
        let mut limited = config(Duration::from_millis(1));
        limited.max_restarts = Some(0);
        let (child, starts) = scripted_child(Vec::new());
        let summary = within(
            Duration::from_secs(5),
            Supervisor::new(limited, child).run(Shutdown::never()),
        )
        .await
        .expect("stops by itself");
        assert_eq!(summary.outcome, Outcome::ServerSpeaksTls);
        assert_eq!(starts.len(), 1);
    }

    #[test]
    fn messages_are_13_lowercase_hex_digits() {
        for _ in 0..100 {
            let message = random_message();
            assert_eq!(message.len(), 13);
            assert!(
                message
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            );
        }
    }
}
