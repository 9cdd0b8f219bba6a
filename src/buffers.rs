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
//! allocator twice per message, and a few long ones (a read buffer that grew
//! for a long line, a long line's reply), so that clients that send long
//! lines one after another do not have every line's buffers mapped, faulted
//! in and unmapped anew. Anything else given back is freed.

use std::cell::RefCell;

/// Bytes in a read buffer: one read takes up to this much from the socket.
pub(crate) const READ_SIZE: usize = 4096;

/// A read buffer that must grow for a long line starts at this size. The
/// binary has the allocator map blocks this size and up on their own
/// (`limits::return_long_buffers`), so what a long line borrowed goes back
/// to the system when it is freed, instead of staying in the heap.
pub(crate) const GROWN_MIN: usize = 16 * 1024;

/// Reply buffers up to this capacity go back to the standard pool; larger
/// ones (a burst of replies, a long line) to the few long ones kept.
pub(crate) const OUT_KEEP_MAX: usize = 16 * 1024;

/// Buffers of each standard kind one thread keeps for reuse.
const KEPT_PER_THREAD: usize = 32;

/// Long buffers of each kind (read, reply) one thread keeps for reuse: the
/// largest it was given back. A few: what stays of a burst of long lines is
/// at most this many of [`LONG_KEEP_MAX`] per kind per executor thread (the
/// rest is unmapped when freed), and enough for a handful of clients that
/// send long lines to the same thread at once.
const LONG_KEPT_PER_THREAD: usize = 4;

/// The largest long buffer a thread keeps: room for a line of the default
/// `--max-line` (64 KiB), read (257 bytes more) or answered (26 more).
/// Longer ones are freed.
const LONG_KEEP_MAX: usize = 65 * 1024;

type Pool = std::thread::LocalKey<RefCell<Vec<Vec<u8>>>>;

thread_local! {
    static READS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static OUTS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static LONG_READS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
    static LONG_OUTS: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// A read buffer of [`READ_SIZE`] bytes (initialized; its contents are
/// whatever it held last).
pub(crate) fn take_read() -> Vec<u8> {
    READS
        .with(|pool| pool.borrow_mut().pop())
        .unwrap_or_else(|| vec![0; READ_SIZE])
}

/// A read buffer for a line that outgrew the standard one: of `min` to
/// `max` bytes (initialized, whatever it held last), the largest the thread
/// keeps in that range (the fewer times a line grows, the fewer copies), or
/// a new one of exactly `min`.
pub(crate) fn take_grown(min: usize, max: usize) -> Vec<u8> {
    let Some(mut buf) = take_long(&LONG_READS, min, max, true) else {
        return vec![0; min];
    };
    buf.resize(buf.capacity(), 0);
    buf
}

/// Gives a read buffer back: one of the standard size, or one that grew, to
/// its pool; the rest is freed.
pub(crate) fn give_read(buf: Vec<u8>) {
    if buf.len() == READ_SIZE && buf.capacity() == READ_SIZE {
        keep(&READS, buf);
    } else if buf.len() > READ_SIZE {
        keep_long(&LONG_READS, buf);
    }
}

/// Makes room for `more` bytes in the reply buffer `out`, from the thread's
/// pools: a standard one if it holds none, and if what it holds and `more`
/// are beyond [`OUT_KEEP_MAX`], the smallest long one kept that fits, or a
/// new one of exactly that size (so that a client whose write waits holds
/// a long line's reply once, not twice its size). A batch of replies stops
/// growing at that size, so what it holds is moved at most once.
pub(crate) fn reserve_out(out: &mut Vec<u8>, more: usize) {
    if out.capacity() == 0 {
        *out = take_out();
    }
    let need = out.len() + more;
    if need <= out.capacity() {
        return;
    }
    if need <= OUT_KEEP_MAX {
        out.reserve(more);
        return;
    }
    let mut long =
        take_long(&LONG_OUTS, need, usize::MAX, false).unwrap_or_else(|| Vec::with_capacity(need));
    long.extend_from_slice(out);
    give_out(std::mem::replace(out, long));
}

fn take_out() -> Vec<u8> {
    OUTS.with(|pool| pool.borrow_mut().pop())
        .unwrap_or_default()
}

/// Gives a reply buffer back, emptied, to the pool of its size; one over
/// [`LONG_KEEP_MAX`] is freed.
pub(crate) fn give_out(mut buf: Vec<u8>) {
    buf.clear();
    if buf.capacity() > OUT_KEEP_MAX {
        keep_long(&LONG_OUTS, buf);
    } else if buf.capacity() > 0 {
        keep(&OUTS, buf);
    }
}

/// A buffer from `pool` of `min` to `max` bytes of capacity: the largest
/// there is if `largest`, else the smallest.
fn take_long(pool: &'static Pool, min: usize, max: usize, largest: bool) -> Option<Vec<u8>> {
    pool.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        let fits = (0..pool.len()).filter(|&i| (min..=max).contains(&pool[i].capacity()));
        let pick = if largest {
            fits.max_by_key(|&i| pool[i].capacity())
        } else {
            fits.min_by_key(|&i| pool[i].capacity())
        }?;
        Some(pool.swap_remove(pick))
    })
    .ok()
    .flatten()
}

/// Keeps `buf` in `pool` if it is at most [`LONG_KEEP_MAX`], and only the
/// largest [`LONG_KEPT_PER_THREAD`] there: so the pool comes to hold the
/// sizes the lines need, and a buffer it does not fit is freed.
fn keep_long(pool: &'static Pool, buf: Vec<u8>) {
    if buf.capacity() > LONG_KEEP_MAX {
        return;
    }
    // A thread being torn down drops the buffer instead.
    let _ = pool.try_with(|pool| {
        let mut pool = pool.borrow_mut();
        pool.push(buf);
        if pool.len() > LONG_KEPT_PER_THREAD {
            if let Some(smallest) = (0..pool.len()).min_by_key(|&i| pool[i].capacity()) {
                pool.swap_remove(smallest);
            }
        }
    });
}

fn keep(pool: &'static Pool, buf: Vec<u8>) {
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
    fn grown_buffers_go_to_their_own_pools() {
        let mut out = take_out();
        out.resize(OUT_KEEP_MAX + 1, 0);
        give_out(out);
        assert!(take_out().capacity() <= OUT_KEEP_MAX);
        let mut read = take_read();
        read.resize(READ_SIZE * 2, 0);
        give_read(read);
        assert_eq!(take_read().capacity(), READ_SIZE);
        assert_eq!(
            take_grown(READ_SIZE + 1, READ_SIZE * 2).len(),
            READ_SIZE * 2
        );
    }

    #[test]
    fn a_thread_keeps_its_largest_few_long_buffers() {
        let smallest = READ_SIZE * 2;
        for extra in 0..LONG_KEPT_PER_THREAD + 2 {
            give_read(vec![0; smallest + extra]);
        }
        give_read(vec![0; LONG_KEEP_MAX + 1]);
        let mut kept: Vec<usize> =
            LONG_READS.with_borrow(|pool| pool.iter().map(Vec::len).collect());
        kept.sort_unstable();
        let largest: Vec<usize> = (2..LONG_KEPT_PER_THREAD + 2)
            .map(|extra| smallest + extra)
            .collect();
        assert_eq!(
            kept, largest,
            "the two smallest and the one too long were freed"
        );
        let biggest = smallest + LONG_KEPT_PER_THREAD + 1;
        assert_eq!(
            take_grown(smallest, usize::MAX).len(),
            biggest,
            "the largest that fits"
        );
        assert_eq!(take_grown(smallest, smallest + 2).len(), smallest + 2);
        let new = take_grown(biggest, LONG_KEEP_MAX);
        assert_eq!(
            (new.len(), new.capacity()),
            (biggest, biggest),
            "none fits: a new one, exact"
        );
    }

    #[test]
    fn a_long_reply_is_held_at_its_size_and_its_buffer_kept() {
        let long = OUT_KEEP_MAX * 2;
        let mut longer = Vec::new();
        reserve_out(&mut longer, long * 2);
        let mut out = Vec::new();
        reserve_out(&mut out, long);
        assert_eq!(
            out.capacity(),
            long,
            "exact: a long line's reply is held once"
        );
        let at = out.as_ptr();
        out.resize(long, b'x');
        give_out(out);
        give_out(longer);
        let mut again = Vec::new();
        reserve_out(&mut again, b"short".len());
        again.extend_from_slice(b"short");
        reserve_out(&mut again, OUT_KEEP_MAX);
        assert_eq!(again.as_ptr(), at, "the smallest long one kept that fits");
        assert_eq!(again, b"short", "with what the buffer held before");
    }

    #[test]
    fn a_thread_keeps_a_bounded_number() {
        let taken: Vec<Vec<u8>> = (0..KEPT_PER_THREAD * 2).map(|_| take_read()).collect();
        taken.into_iter().for_each(give_read);
        assert_eq!(READS.with(|pool| pool.borrow().len()), KEPT_PER_THREAD);
    }
}
