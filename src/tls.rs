//! TLS set-up: the server's certificate, which SIGHUP can replace while the
//! server runs, the client's trust roots, and handshake failures in words.
//!
//! The server's certificate is refused outside its dates (at start, and on a
//! reload, which keeps the old one), warned about in its last
//! two weeks (`leaf::EXPIRY_WARNING`), and checked again daily and at its expiry while the
//! server runs ([`TlsReloader::watch`]).
//!
//! The handshakes themselves and the encrypted streams are futures-rustls's;
//! they live behind [`crate::net::LineSocket`], so no actor handles a TLS
//! type. The crypto provider is rustls's `ring` (see `docs/architecture.md`
//! for why), passed explicitly, so nothing depends on a process-wide default.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{FutureExt, select_biased};

use futures_rustls::TlsAcceptor;
use futures_rustls::pki_types::pem::PemObject;
use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer};
use futures_rustls::rustls::crypto::{CryptoProvider, ring};
use futures_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use futures_rustls::rustls::sign::CertifiedKey;
use futures_rustls::rustls::{self, AlertDescription, CertificateError};
use kv_log_macro::warn;
use log::kv::Value;

use crate::rt::sleep;
use crate::shutdown::Shutdown;

mod client;
mod leaf;

pub use client::ClientTls;

use leaf::Leaf;

/// How often a running TLS server checks its certificate's dates, so a near
/// expiry is warned about once a day (and the expiry itself is logged when
/// it comes, whatever this says).
pub(crate) const CERTIFICATE_CHECK_INTERVAL: Duration = Duration::from_secs(24 * 60 * 60);

/// A server's certificate chain and private key: two PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first (`--tls-cert`).
    pub cert: PathBuf,
    /// Its private key: PKCS#8, PKCS#1 or SEC1 (`--tls-key`).
    pub key: PathBuf,
}

/// TLS could not be set up: which file, and why.
#[derive(Debug)]
pub struct TlsError(String);

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsError {}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(ring::default_provider())
}

/// The server's side: what accepts handshakes, and the certificate they use.
#[derive(Clone)]
pub(crate) struct ServerTls {
    pub(crate) acceptor: TlsAcceptor,
    certificate: Arc<CurrentCertificate>,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.certificate.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate and key, and refuses a certificate outside its
    /// dates; an error names the file at fault (and the dates).
    pub(crate) fn load(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let now = Utc::now();
        let loaded = Loaded::read(files, &provider, now)?;
        loaded.leaf.log("TLS certificate loaded", &files.cert);
        loaded.leaf.warn_of_dates(&files.cert, now);
        let certificate = Arc::new(CurrentCertificate {
            files: files.clone(),
            in_use: RwLock::new(loaded),
            provider: provider.clone(),
        });
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS set-up failed: {e}")))?
            .with_no_client_auth()
            .with_cert_resolver(certificate.clone());
        Ok(ServerTls {
            acceptor: TlsAcceptor::from(Arc::new(config)),
            certificate,
        })
    }

    /// The handle that replaces the certificate.
    pub(crate) fn reloader(&self) -> TlsReloader {
        TlsReloader(self.certificate.clone())
    }
}

/// The certificate every new handshake gets; a reload swaps it.
#[derive(Debug)]
struct CurrentCertificate {
    files: TlsFiles,
    in_use: RwLock<Loaded>,
    provider: Arc<CryptoProvider>,
}

impl CurrentCertificate {
    /// What the certificate in use says of itself.
    fn leaf(&self) -> Leaf {
        // A panic while the lock was held cannot leave a half-written pair.
        let in_use = self.in_use.read().unwrap_or_else(PoisonError::into_inner);
        in_use.leaf.clone()
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // As in `leaf`: a poisoned lock still holds a whole pair.
        let in_use = self.in_use.read().unwrap_or_else(PoisonError::into_inner);
        Some(in_use.key.clone())
    }
}

/// A certificate and key as loaded, with what its checks and logs read.
#[derive(Debug)]
struct Loaded {
    key: Arc<CertifiedKey>,
    leaf: Leaf,
}

impl Loaded {
    /// Reads both files, and refuses a certificate outside its dates at `now`.
    fn read(
        files: &TlsFiles,
        provider: &CryptoProvider,
        now: DateTime<Utc>,
    ) -> Result<Loaded, TlsError> {
        let key = load_certified_key(files, provider)?;
        let cannot = |e: &dyn fmt::Display| {
            TlsError(format!(
                "cannot read the dates of the certificate in {}: {e}",
                files.cert.display()
            ))
        };
        let der = key.end_entity_cert().map_err(|e| cannot(&e))?;
        let leaf = Leaf::parse(der).map_err(|e| cannot(&e))?;
        leaf.check(&files.cert, now)?;
        Ok(Loaded {
            key: Arc::new(key),
            leaf,
        })
    }
}

/// Replaces a running server's certificate with what its files hold now
/// (the SIGHUP path); see [`Server::tls_reloader`](crate::server::Server::tls_reloader).
#[derive(Clone, Debug)]
pub struct TlsReloader(Arc<CurrentCertificate>);

/// What a successful [`TlsReloader::reload`] found in the files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reloaded {
    /// Another certificate: new connections get it.
    Replaced,
    /// The certificate already in use: nothing changed.
    Unchanged,
}

impl TlsReloader {
    /// Loads the certificate and key again from the same paths. New
    /// connections get the new certificate; open ones keep theirs. If the
    /// files do not load, or the certificate is outside its dates, the old
    /// one stays. Logged either way, with the subject and the expiry.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let current = &self.0;
        let now = Utc::now();
        let loaded = match Loaded::read(&current.files, &current.provider, now) {
            Ok(loaded) => loaded,
            Err(e) => {
                warn!("TLS certificate reload failed: keeping the old one", {
                    error: Value::from_display(&e),
                });
                return Err(e);
            }
        };
        let leaf = loaded.leaf.clone();
        let outcome = {
            let mut in_use = current
                .in_use
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            // The same chain is the same key too: it loaded as the pair.
            if in_use.key.cert == loaded.key.cert {
                Reloaded::Unchanged
            } else {
                *in_use = loaded;
                Reloaded::Replaced
            }
        };
        leaf.log(
            match outcome {
                Reloaded::Replaced => "TLS certificate reloaded",
                Reloaded::Unchanged => "TLS certificate unchanged: the files hold the one in use",
            },
            &current.files.cert,
        );
        leaf.warn_of_dates(&current.files.cert, now);
        Ok(outcome)
    }

    /// The certificate in use's notBefore and notAfter (`/metrics`, `/readyz`).
    pub(crate) fn dates(&self) -> (DateTime<Utc>, DateTime<Utc>) {
        let leaf = self.0.leaf();
        (leaf.not_before, leaf.not_after)
    }

    /// Checks the certificate in use every `every`, and just after it
    /// expires, until `shutdown`: warns of a near expiry (so, with
    /// [`CERTIFICATE_CHECK_INTERVAL`], once a day), and logs an error once
    /// it has expired, when every new handshake fails.
    pub(crate) async fn watch(self, every: Duration, shutdown: Shutdown) {
        loop {
            let wait = self.0.leaf().next_check(Utc::now(), every);
            select_biased! {
                () = shutdown.wait().fuse() => return,
                () = sleep(wait).fuse() => {}
            }
            // A reload may have replaced it meanwhile.
            self.0.leaf().warn_of_dates(&self.0.files.cert, Utc::now());
        }
    }
}

fn load_certified_key(
    files: &TlsFiles,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = load_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
        TlsError(format!(
            "cannot read a private key from {}: {e}",
            files.key.display()
        ))
    })?;
    CertifiedKey::from_der(chain, key, provider).map_err(|e| {
        TlsError(format!(
            "{} and {} are not a certificate and its key: {e}",
            files.cert.display(),
            files.key.display()
        ))
    })
}

fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let cannot = |e: &dyn fmt::Display| {
        TlsError(format!(
            "cannot read certificates from {}: {e}",
            path.display()
        ))
    };
    let chain = CertificateDer::pem_file_iter(path)
        .map_err(|e| cannot(&e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cannot(&e))?;
    if chain.is_empty() {
        return Err(cannot(&"no CERTIFICATE section in the file"));
    }
    Ok(chain)
}

/// Why a handshake failed, in a few words a log reader can act on; the
/// error itself carries rustls's detail.
pub(crate) fn failure_reason(error: &io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return match error.kind() {
            io::ErrorKind::UnexpectedEof => "peer closed during the handshake",
            io::ErrorKind::TimedOut => "handshake timed out",
            _ => "connection failed during the handshake",
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(e) => match e {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "certificate expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "certificate not valid yet"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "certificate is for another name"
            }
            CertificateError::UnknownIssuer => "certificate issuer unknown",
            _ => "certificate rejected",
        },
        rustls::Error::AlertReceived(alert) => match alert {
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied => "peer rejected our certificate",
            AlertDescription::ProtocolVersion | AlertDescription::HandshakeFailure => {
                "no TLS version or cipher in common"
            }
            _ => "peer sent an alert",
        },
        rustls::Error::InvalidMessage(_) => "not a TLS handshake",
        rustls::Error::PeerIncompatible(_) => "no TLS version or cipher in common",
        _ => "handshake failed",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;
    use leaf::{EXPIRY_WARNING, Standing, stamp};

    fn at(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .expect("an RFC 3339 date")
            .to_utc()
    }

    fn leaf(not_before: &str, not_after: &str) -> Leaf {
        Leaf {
            subject: "CN=localhost".to_owned(),
            not_before: at(not_before),
            not_after: at(not_after),
        }
    }

    #[test]
    fn the_subject_and_dates_are_read_from_the_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc.");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2051, 6, 30);
        let key = rcgen::KeyPair::generate().expect("key");
        let certificate = params.self_signed(&key).expect("certificate");
        let leaf = Leaf::parse(certificate.der()).expect("parses");
        assert_eq!(leaf.subject, r"CN=localhost,O=Example\, Inc.");
        assert_eq!(stamp(leaf.not_before), "2019-01-01T00:00:00Z");
        // After 2049 the date is a GeneralizedTime, not a UTCTime.
        assert_eq!(stamp(leaf.not_after), "2051-06-30T00:00:00Z");
        assert!(Leaf::parse(b"not a certificate").is_err());
    }

    #[test]
    fn a_certificate_is_refused_outside_its_dates_and_warned_of_in_its_last_two_weeks() {
        let leaf = leaf("2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z");
        let standing = |now| leaf.standing(at(now));
        assert_eq!(standing("2025-12-31T23:59:59Z"), Standing::NotValidYet);
        assert_eq!(standing("2026-01-01T00:00:00Z"), Standing::Valid);
        assert_eq!(standing("2026-02-14T23:59:59Z"), Standing::Valid);
        assert_eq!(
            standing("2026-02-15T00:00:00Z"),
            Standing::ExpiresSoon(EXPIRY_WARNING)
        );
        assert_eq!(
            standing("2026-03-01T00:00:00Z"),
            Standing::ExpiresSoon(TimeDelta::zero())
        );
        assert_eq!(standing("2026-03-01T00:00:01Z"), Standing::Expired);

        let cert = Path::new("server.pem");
        let expired = leaf
            .check(cert, at("2026-04-01T12:00:00Z"))
            .expect_err("expired");
        assert_eq!(
            expired.to_string(),
            "the certificate in server.pem (CN=localhost) has expired: \
             notAfter 2026-03-01T00:00:00Z, now 2026-04-01T12:00:00Z"
        );
        let early = leaf
            .check(cert, at("2025-06-01T00:00:00Z"))
            .expect_err("early");
        assert!(
            early
                .to_string()
                .contains("is not valid yet: notBefore 2026-01-01T00:00:00Z"),
            "{early}"
        );
        leaf.check(cert, at("2026-02-28T00:00:00Z"))
            .expect("valid, if not for long");
    }

    #[test]
    fn the_next_check_is_a_day_later_or_just_past_the_expiry() {
        let day = CERTIFICATE_CHECK_INTERVAL;
        let leaf = leaf("2026-01-01T00:00:00Z", "2026-03-01T00:00:00Z");
        assert_eq!(leaf.next_check(at("2026-02-01T00:00:00Z"), day), day);
        // An hour before the expiry: woken a second after it, to log it.
        assert_eq!(
            leaf.next_check(at("2026-02-28T23:00:00Z"), day),
            Duration::from_secs(3601)
        );
        // Expired: every day again, as long as it is in use.
        assert_eq!(leaf.next_check(at("2026-03-02T00:00:00Z"), day), day);
    }
}
