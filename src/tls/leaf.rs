//! The server certificate's own word on itself: its subject and the dates
//! it is valid between, checked at load, on reload and while serving.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, TimeDelta, Utc};
use kv_log_macro::{error, info, warn};
use log::kv::Value;
use x509_cert::Certificate;
use x509_cert::der::Decode;

use super::TlsError;

/// How long before its notAfter the server's certificate is warned about, at
/// load and at every check: two weeks leave time to renew it without a hurry.
pub(super) const EXPIRY_WARNING: TimeDelta = TimeDelta::days(14);

/// What the server's own certificate (the first in its file) says of itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Leaf {
    /// Its subject, as RFC 4514 writes it (`CN=localhost,O=Example`).
    pub(super) subject: String,
    pub(super) not_before: DateTime<Utc>,
    pub(super) not_after: DateTime<Utc>,
}

/// Where a certificate's dates put it at some moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Standing {
    NotValidYet,
    Valid,
    /// Valid, and expiring within [`EXPIRY_WARNING`]: this long is left.
    ExpiresSoon(TimeDelta),
    Expired,
}

/// A date as logs and errors show it: RFC 3339, UTC, to the second (the
/// precision of a certificate's dates).
pub(super) fn stamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

impl Leaf {
    /// Its subject and dates, from the DER certificate.
    pub(super) fn parse(der: &[u8]) -> Result<Leaf, String> {
        let certificate = Certificate::from_der(der).map_err(|e| e.to_string())?;
        let tbs = certificate.tbs_certificate();
        let date = |time: x509_cert::time::Time| {
            let seconds = i64::try_from(time.to_unix_duration().as_secs()).ok();
            seconds
                .and_then(|s| DateTime::from_timestamp(s, 0))
                .ok_or_else(|| "a date out of range".to_owned())
        };
        Ok(Leaf {
            subject: tbs.subject().to_string(),
            not_before: date(tbs.validity().not_before)?,
            not_after: date(tbs.validity().not_after)?,
        })
    }

    /// Where its dates put it at `now`. RFC 5280: valid from notBefore
    /// through notAfter, both included.
    pub(super) fn standing(&self, now: DateTime<Utc>) -> Standing {
        if now < self.not_before {
            Standing::NotValidYet
        } else if now > self.not_after {
            Standing::Expired
        } else if self.not_after - now <= EXPIRY_WARNING {
            Standing::ExpiresSoon(self.not_after - now)
        } else {
            Standing::Valid
        }
    }

    /// An error, with the dates, when every handshake would fail at `now`.
    pub(super) fn check(&self, cert: &Path, now: DateTime<Utc>) -> Result<(), TlsError> {
        let (what, date) = match self.standing(now) {
            Standing::Expired => ("has expired: notAfter", self.not_after),
            Standing::NotValidYet => ("is not valid yet: notBefore", self.not_before),
            Standing::Valid | Standing::ExpiresSoon(_) => return Ok(()),
        };
        Err(TlsError(format!(
            "the certificate in {} ({}) {what} {}, now {}",
            cert.display(),
            self.subject,
            stamp(date),
            stamp(now),
        )))
    }

    /// Logs `message` (info) with the file, the subject and the expiry.
    pub(super) fn log(&self, message: &str, cert: &Path) {
        info!("{}", message, {
            cert: Value::from_display(&cert.display()),
            subject: self.subject.as_str(),
            not_after: stamp(self.not_after).as_str(),
        });
    }

    /// Warns of a near expiry, and logs an error outside the dates (a
    /// running server's certificate can expire, or the clock go back).
    pub(super) fn warn_of_dates(&self, cert: &Path, now: DateTime<Utc>) {
        let cert = cert.display();
        let cert = Value::from_display(&cert);
        let not_after = stamp(self.not_after);
        match self.standing(now) {
            Standing::Valid => {}
            Standing::ExpiresSoon(left) => {
                let seconds = left.num_seconds().unsigned_abs();
                let left = humantime::format_duration(Duration::from_secs(seconds));
                warn!("TLS certificate expires soon: renew it and send SIGHUP", {
                    cert: cert,
                    subject: self.subject.as_str(),
                    not_after: not_after.as_str(),
                    expires_in: Value::from_display(&left),
                });
            }
            Standing::Expired => {
                error!("TLS certificate has expired: every new handshake fails until it is replaced", {
                    cert: cert,
                    subject: self.subject.as_str(),
                    not_after: not_after.as_str(),
                });
            }
            Standing::NotValidYet => {
                error!("TLS certificate is not valid yet: every new handshake fails", {
                    cert: cert,
                    subject: self.subject.as_str(),
                    not_before: stamp(self.not_before).as_str(),
                });
            }
        }
    }

    /// How long until the next check after `now`: `every`, or just past the
    /// expiry if that comes first, so that it is logged when it happens.
    pub(super) fn next_check(&self, now: DateTime<Utc>, every: Duration) -> Duration {
        let until_expired = (self.not_after - now + TimeDelta::seconds(1)).to_std();
        // Negative (already expired): `every`.
        until_expired.map_or(every, |until| until.min(every))
    }
}
