//! Why a per-address limit (`--max-clients-per-ip`,
//! `--connect-rate-per-ip`) turned a connection away: in
//! [`Admission::Refused`](super::Admission::Refused) and
//! [`LeaveReason::Refused`](super::LeaveReason::Refused).

use std::fmt;

/// Which per-address limit turned a connection away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PerIpRefusal {
    /// Its address holds `--max-clients-per-ip` clients already.
    TooMany,
    /// Its address connects faster than `--connect-rate-per-ip`.
    TooFast,
}

impl PerIpRefusal {
    /// The line the client is told.
    pub(crate) fn error_line(self) -> &'static [u8] {
        match self {
            PerIpRefusal::TooMany => crate::wire::TOO_MANY_FROM_ADDRESS_ERROR,
            PerIpRefusal::TooFast => crate::wire::CONNECTING_TOO_FAST_ERROR,
        }
    }
}

impl fmt::Display for PerIpRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PerIpRefusal::TooMany => "too many connections from its address",
            PerIpRefusal::TooFast => "connecting too fast",
        })
    }
}
