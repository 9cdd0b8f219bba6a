//! Buffers lent to a connection only while it has bytes to handle.
//!
//! An idle connection holds no buffer: its session waits for the socket to be
//! readable, borrows a read buffer to read into, and gives it back once every
//! line in it is answered and nothing is left over (a partial line keeps its
//! bytes, and so its buffer). The reply buffer is borrowed the same way, for
//! one write. At 10,000 idle clients that is what brings a client under a
//! kilobyte (docs/performance.md).
//!
//! Each executor thread keeps a few buffers of the standard sizes for the
//! next connection that needs one, so a busy server does not ask the
//! allocator twice per message; anything else given back (a buffer that grew
//! for a long line, or one more than the pool keeps) is freed.

use std::cell::RefCell;

/// Bytes in a read buffer: one read takes up to this much from the socket.
pub(crate) const READ_SIZE: usize = 4096;

/// A read buffer that must grow for a long line starts at this size. The
/// binary has the allocator map blocks this size and up on their own
/// (`limits::return_long_buffers`), so what a long line borrowed goes back
/// to the system when it is freed, instead of staying in the heap.
pub(crate) const GROWN_MIN: usize = 16 * 1024;

/// Reply buffers up to this capacity go back to the pool; larger ones (a
/// burst of replies, a long line) are freed, so they do not pin memory.
pub(crate) const OUT_KEEP_MAX: usize = 16 * 1024;

/// Buffers of each kind one thread keeps for reuse.
const KEPT_PER_THREAD: usize = 32;

thread_local! {
    static READS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static OUTS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer of [`READ_SIZE`] bytes (initialized; its contents are
/// whatever it held last).
pub(crate) fn take_read() -> Vec<u8> {
    READS
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; READ_SIZE])
}

/// Gives a read buffer back; one that is not of the standard size is freed.
pub(crate) fn give_read(buf: Vec<u8>) {
    if buf.len() == READ_SIZE && buf.capacity() == READ_SIZE {
        keep(&READS, buf);
    }
}

/// `out`, with an empty reply buffer from the pool in it if it held none.
pub(crate) fn lend_out(out: &mut Vec<u8>) -> &mut Vec<u8> {
    if out.capacity() == 0 {
        *out = take_out();
    }
    out
}

fn take_out() -> Vec<u8> {
    OUTS.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default()
}

/// Gives a reply buffer back, emptied; one over [`OUT_KEEP_MAX`] is freed.
pub(crate) fn give_out(mut buf: Vec<u8>) {
    if buf.capacity() > 0 && buf.capacity() <= OUT_KEEP_MAX {
        buf.clear();
        keep(&OUTS, buf);
    }
}

fn keep(pool: &'static std::thread::LocalKey<RefCell<Vec<Vec<u8>>>>, buf: Vec<u8>) {
    // A thread being torn down drops the buffer instead.
    let _ = pool.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        if pool.len() < KEPT_PER_THREAD {
            pool.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_lent_again() {
        let mut buf = take_read();
        assert_eq!(buf.len(), READ_SIZE);
        buf[0] = 42;
        let at = buf.as_ptr();
        give_read(buf);
        let again = take_read();
        assert_eq!(again.as_ptr(), at, "the same buffer");
        give_read(again);
    }

    #[test]
    fn grown_buffers_are_freed_not_kept() {
        let mut out = take_out();
        out.resize(OUT_KEEP_MAX + 1, 0);
        give_out(out);
        assert!(take_out().capacity() <= OUT_KEEP_MAX);
        let mut read = take_read();
        read.resize(READ_SIZE * 2, 0);
        give_read(read);
        assert_eq!(take_read().capacity(), READ_SIZE);
    }

    #[test]
    fn a_thread_keeps_a_bounded_number() {
        let taken: Vec<Vec<u8>> = (0..KEPT_PER_THREAD * 2).map(|_| take_read()).collect();
        taken.into_iter().for_each(give_read);
        assert_eq!(READS.with(|pool| pool.borrow().len()), KEPT_PER_THREAD);
    }
}
