//! The log backend: env_logger, filtered by RUST_LOG (default `info`), as
//! text lines or one JSON object per line, written to stderr by a thread of
//! its own; and a way to log a long listing (a snapshot's line per client)
//! without holding up the executor.
//!
//! Nothing that serves clients ever waits for stderr. A write to a log file
//! can wait on the disk, and a write to a pipe whose reader has stalled waits
//! for good; written in place, either would stop the executor
//! and every session on it. So a log call only appends the formatted line to
//! a bounded in-memory queue, and the writer thread copies the queue to
//! stderr. When the queue is full the line is dropped and counted, and the
//! writer reports the count once it catches up. (env_logger has no such
//! target of its own; `tracing-appender` has one, but brings the `tracing`
//! stack into a `log` codebase for what is a queue and a thread.)

mod listing;

use std::io::{self, IsTerminal, Write};
use std::mem;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use env_logger::{Builder, Env, Target, WriteStyle};
use kv_log_macro::warn;
use log::kv::{self, Key, Value, VisitSource};
use serde_json::{Map, Value as Json};

pub(crate) use listing::{Listing, Throttle, log_in_background, log_in_place};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines: time, level, module, message, key=value pairs.
    Text,
    /// One JSON object per line, with the key/values as fields.
    Json,
}

/// Formatted lines waiting for the writer thread, at most, in bytes (a line
/// is some 100 to 300 bytes).
const QUEUE_BYTES: usize = 1 << 20;

/// How long the writer lets lines gather after the first one, so that a
/// burst (a snapshot's 10 000 client lines) is written in a few large writes,
/// not one write and one thread wake-up per line.
const GATHER: Duration = Duration::from_millis(2);

/// Capacity the writer thread keeps in its buffers between bursts.
const KEPT_BYTES: usize = 64 << 10;

/// How long [`LogWriter::finish`] waits for queued lines to reach stderr: a
/// stuck stderr must not keep the program from exiting.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// Installs the logger and starts its writer thread. Call once, before
/// anything logs, and call [`LogWriter::finish`] before exiting.
pub fn init(format: LogFormat) -> LogWriter {
    let mut builder = Builder::from_env(Env::default().default_filter_or("info"));
    // env_logger colours only its own stderr target; for ours, decide as it
    // would have: colour on a terminal unless RUST_LOG_STYLE says otherwise.
    let style = std::env::var("RUST_LOG_STYLE");
    if matches!(style.as_deref(), Err(_) | Ok("auto")) && io::stderr().is_terminal() {
        builder.write_style(WriteStyle::Always);
    }
    let (queue, writer) = LogQueue::start();
    builder.target(Target::Pipe(Box::new(QueueWriter(queue))));
    if format == LogFormat::Json {
        builder.format(|out, record| {
            let message = record.args().to_string();
            let mut fields = json_fields(record.level(), record.target(), &message);
            // Collecting into a map cannot fail.
            let _ = record.key_values().visit(&mut JsonFields(&mut fields));
            writeln!(out, "{}", Json::Object(fields))
        });
    }
    builder.init();
    writer
}

/// A JSON log line's own fields: time, level, target and message.
fn json_fields(level: log::Level, target: &str, message: &str) -> Map<String, Json> {
    let mut fields = Map::new();
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    fields.insert("ts".into(), now.into());
    fields.insert("level".into(), level.as_str().into());
    fields.insert("target".into(), target.into());
    fields.insert("msg".into(), message.into());
    fields
}

/// Prints an error that ends the program straight to stderr, in `format`
/// (`error: …`, or a JSON line from `target`): not through the log, so that
/// no `RUST_LOG` filter can hide it. Call it once the log is finished, so
/// that it is the last line.
pub fn print_error(format: LogFormat, target: &str, message: &str) {
    match format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => {
            let line = Json::Object(json_fields(log::Level::Error, target, message));
            eprintln!("{line}");
        }
    }
}

/// The levels a `RUST_LOG` directive can name.
const LEVELS: &str = "error, warn, info, debug, trace, off";

/// Checks a `RUST_LOG` filter, which env_logger would take without a word
/// even where it enables nothing (`warning` and `inf` name modules to it, an
/// empty filter turns every line off) or ignores a part (`duplex=inf`, with
/// a warning of its own in plain text): each comma-separated directive must
/// be a level, one of duplex's own modules (all levels), or `MODULE=LEVEL`.
pub fn check_filter(filter: &str) -> Result<(), String> {
    let directives: Vec<&str> = filter.split(',').map(str::trim).collect();
    if directives.iter().all(|d| d.is_empty()) {
        return Err(format!(
            "RUST_LOG is empty, which would turn every log line off; unset it for the default (info), or name a level ({LEVELS})"
        ));
    }
    // A `/text` suffix filters by message and is not checked.
    let directives: Vec<&str> = directives
        .into_iter()
        .map(|d| d.split_once('/').map_or(d, |(d, _)| d.trim()))
        .collect();
    for directive in directives.into_iter().filter(|d| !d.is_empty()) {
        let is_level = |word: &str| word.parse::<log::LevelFilter>().is_ok();
        match directive.split_once('=') {
            Some(("", _)) => {
                return Err(format!(
                    "RUST_LOG={filter:?}: {directive:?} names no module before its `=`"
                ));
            }
            Some((_, level)) if is_level(level) => {}
            Some((_, level)) => {
                return Err(format!(
                    "RUST_LOG={filter:?}: in {directive:?}, {level:?} is not a level ({LEVELS})"
                ));
            }
            None if is_level(directive) => {}
            None if directive == "duplex" || directive.starts_with("duplex::") => {}
            None => {
                return Err(format!(
                    "RUST_LOG={filter:?}: {directive:?} is not a level ({LEVELS}) nor one of duplex's modules; to filter another crate write MODULE=LEVEL"
                ));
            }
        }
    }
    Ok(())
}

/// Waits, if the log queue is over half full, until the writer thread has
/// taken what is queued. Returns at once when no log queue is installed.
pub(super) fn wait_for_room() {
    if let Some(queue) = QUEUE.get() {
        let mut state = queue.lock();
        while state.bytes.len() > QUEUE_BYTES / 2 && !state.closed {
            state = queue.taken.wait(state).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// Lines dropped since start, for `/metrics` (only a line that finds the
/// queue full counts it).
static LINES_DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Log lines dropped since start because stderr could not keep up.
pub(crate) fn lines_dropped() -> u64 {
    LINES_DROPPED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The queue the installed logger writes into, for [`wait_for_room`].
static QUEUE: OnceLock<Arc<LogQueue>> = OnceLock::new();

/// Formatted lines on their way to stderr.
struct LogQueue {
    state: Mutex<QueueState>,
    /// Signalled when lines arrive or the queue closes.
    filled: Condvar,
    /// Signalled when the writer thread takes the queued lines, and when it ends.
    taken: Condvar,
}

#[derive(Default)]
struct QueueState {
    /// Whole lines, in the order they were logged.
    bytes: Vec<u8>,
    /// Lines dropped because the queue was full, not yet reported.
    dropped: u64,
    /// No more lines will come; the writer thread ends once the queue is empty.
    closed: bool,
    /// The writer thread has ended.
    finished: bool,
}

impl LogQueue {
    fn new() -> LogQueue {
        LogQueue {
            state: Mutex::new(QueueState::default()),
            filled: Condvar::new(),
            taken: Condvar::new(),
        }
    }

    fn start() -> (Arc<LogQueue>, LogWriter) {
        let queue = Arc::new(LogQueue::new());
        let _ = QUEUE.set(queue.clone());
        let writer_queue = queue.clone();
        let thread = std::thread::Builder::new()
            .name("duplex-log".into())
            .spawn(move || writer_queue.write_to_stderr());
        let writer = LogWriter {
            queue: queue.clone(),
            // Without the thread, nothing would ever leave the queue; say so
            // where it can still be seen.
            thread: thread
                .inspect_err(|e| eprintln!("no log writer thread, log lines are lost: {e}"))
                .ok(),
        };
        (queue, writer)
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // The lock is only held to move bytes; a panic cannot leave the state
        // half-changed.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues one formatted line, or counts it dropped when the queue is full.
    fn push(&self, line: &[u8]) {
        let mut state = self.lock();
        let was_empty = state.bytes.is_empty() && state.dropped == 0;
        let was_half_full = state.bytes.len() > QUEUE_BYTES / 2;
        // A line longer than the whole queue still goes through an empty one.
        if state.bytes.is_empty() || state.bytes.len() + line.len() <= QUEUE_BYTES {
            state.bytes.extend_from_slice(line);
        } else {
            state.dropped += 1;
            LINES_DROPPED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let became_half_full = !was_half_full && state.bytes.len() > QUEUE_BYTES / 2;
        drop(state);
        // The writer waits for a first line, then lets more gather until the
        // queue is half full; only those two moments need it woken (a wake
        // is a system call).
        if was_empty || became_half_full {
            self.filled.notify_one();
        }
    }

    /// The writer thread: waits for a line, lets more gather for [`GATHER`]
    /// (less when the queue is half full or closing), takes everything
    /// queued and writes it with one call; repeats until the queue closes and
    /// is empty.
    fn write_to_stderr(&self) {
        let mut batch = Vec::new();
        loop {
            let mut state = self.lock();
            while state.bytes.is_empty() && state.dropped == 0 && !state.closed {
                state = self.filled.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            let gathered = Instant::now() + GATHER;
            while state.bytes.len() <= QUEUE_BYTES / 2 && !state.closed {
                let left = gathered.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                state = self
                    .filled
                    .wait_timeout(state, left)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            if state.bytes.is_empty() && state.dropped == 0 {
                state.finished = true;
                drop(state);
                self.taken.notify_all();
                return;
            }
            mem::swap(&mut state.bytes, &mut batch);
            let dropped = mem::take(&mut state.dropped);
            drop(state);
            self.taken.notify_all();
            // Nowhere to report a failed write to stderr.
            let _ = io::stderr().lock().write_all(&batch);
            batch.clear();
            // The two buffers take turns; after a burst, neither keeps more
            // than a quiet log needs.
            batch.shrink_to(KEPT_BYTES);
            if dropped > 0 {
                warn!("log lines dropped: stderr could not keep up", { dropped: dropped });
            }
        }
    }
}

/// The logger's target: hands each formatted line to the queue.
struct QueueWriter(Arc<LogQueue>);

impl Write for QueueWriter {
    /// env_logger writes each line with one call (`write_all` of the whole
    /// formatted record), so the queue only ever holds whole lines.
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        self.0.push(line);
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The log's writer thread, held by `main` until the program ends. Dropping
/// it (also when `main` unwinds from a panic) does what [`LogWriter::finish`]
/// does.
pub struct LogWriter {
    queue: Arc<LogQueue>,
    thread: Option<JoinHandle<()>>,
}

impl LogWriter {
    /// Writes out what is queued and stops the writer thread, waiting at most
    /// `FINISH_WAIT` for a stderr that does not take it. Nothing logged
    /// after this reaches stderr.
    pub fn finish(self) {
        drop(self);
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if self.queue.close_and_wait() {
            let _ = thread.join();
        }
    }
}

impl LogQueue {
    /// Closes the queue and waits, at most [`FINISH_WAIT`], for the writer
    /// thread to write out what is queued; whether it did.
    fn close_and_wait(&self) -> bool {
        let deadline = Instant::now() + FINISH_WAIT;
        let mut state = self.lock();
        state.closed = true;
        self.filled.notify_one();
        while !state.finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            state = (self.taken.wait_timeout(state, left))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        true
    }
}

/// Exits the process with `code` at once, from any thread, after writing out
/// the lines already logged (waiting at most `FINISH_WAIT` for stderr).
pub fn exit_now(code: i32) -> ! {
    if let Some(queue) = QUEUE.get() {
        queue.close_and_wait();
    }
    std::process::exit(code)
}

/// Copies key/values into a JSON object, keeping numbers and booleans typed.
struct JsonFields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for JsonFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let json = if let Some(n) = value.to_u64() {
            n.into()
        } else if let Some(n) = value.to_i64() {
            n.into()
        } else if let Some(b) = value.to_bool() {
            b.into()
        } else if let Some(x) = value.to_f64() {
            x.into()
        } else {
            value.to_string().into()
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_that_would_silence_or_be_ignored_are_refused() {
        for fine in [
            "info",
            "WARN",
            "off",
            "duplex",
            "duplex::actors::registry=info",
            "info,rustls=warn",
            "info/joined",
            "debug,",
        ] {
            assert_eq!(check_filter(fine), Ok(()), "{fine}");
        }
        for (bad, says) in [
            ("", "empty"),
            (" , ", "empty"),
            ("warning", "\"warning\" is not a level"),
            ("inf", "\"inf\" is not a level"),
            ("duplex=inf", "\"inf\" is not a level"),
            ("info,=debug", "names no module"),
        ] {
            let error = check_filter(bad).expect_err(bad);
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn a_full_queue_drops_whole_lines_and_counts_them() {
        let queue = LogQueue::new();
        let line = [b'x'; 1000];
        let fit = QUEUE_BYTES / line.len();
        for _ in 0..fit + 2 {
            queue.push(&line);
        }
        let state = queue.lock();
        assert_eq!(state.bytes.len(), fit * line.len());
        assert_eq!(state.dropped, 2);
    }

    #[test]
    fn a_line_longer_than_the_whole_queue_still_goes_through_an_empty_one() {
        let queue = LogQueue::new();
        let line = vec![b'x'; QUEUE_BYTES + 1];
        queue.push(&line);
        queue.push(b"next\n");
        let state = queue.lock();
        assert_eq!(state.bytes.len(), line.len());
        assert_eq!(state.dropped, 1);
    }
}
