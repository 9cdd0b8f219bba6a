//! Socket options that neither std nor socket2 sets, by their numbers.

use std::io;
use std::os::fd::AsRawFd;

/// Sets the integer socket option `name` at `level` on `socket`.
#[cfg(any(target_os = "linux", target_os = "android"))]
pub(crate) fn set_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: the descriptor is open (the caller holds its socket) and the
    // value is a c_int of the size passed.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if set == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
