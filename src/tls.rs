//! TLS set-up: the server's certificate, which SIGHUP can replace while the
//! server runs, the client's trust roots, and handshake failures in words.
//!
//! The handshakes themselves and the encrypted streams are futures-rustls's;
//! they live behind [`crate::net::LineSocket`], so no actor handles a TLS
//! type. The crypto provider is rustls's `ring` (see `docs/architecture.md`
//! for why), passed explicitly, so nothing depends on a process-wide default.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use futures_rustls::pki_types::pem::PemObject;
use futures_rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use futures_rustls::rustls::crypto::{CryptoProvider, ring};
use futures_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use futures_rustls::rustls::sign::CertifiedKey;
use futures_rustls::rustls::{self, AlertDescription, CertificateError, RootCertStore};
use futures_rustls::{TlsAcceptor, TlsConnector};
use kv_log_macro::{info, warn};
use log::kv::Value;

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
    /// Loads the certificate and key; an error names the file at fault.
    pub(crate) fn load(files: &TlsFiles) -> Result<ServerTls, TlsError> {
        let provider = provider();
        let key = load_certified_key(files, &provider)?;
        let certificate = Arc::new(CurrentCertificate {
            files: files.clone(),
            key: RwLock::new(Arc::new(key)),
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
    key: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A panic while the lock was held cannot leave a half-written Arc.
        Some(
            self.key
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// Replaces a running server's certificate with what its files hold now
/// (the SIGHUP path); see [`Server::tls_reloader`](crate::server::Server::tls_reloader).
#[derive(Clone, Debug)]
pub struct TlsReloader(Arc<CurrentCertificate>);

impl TlsReloader {
    /// Loads the certificate and key again from the same paths. New
    /// connections get the new certificate; open ones keep theirs. If the
    /// files do not load, the old certificate stays. Logged either way.
    pub fn reload(&self) -> Result<(), TlsError> {
        let current = &self.0;
        match load_certified_key(&current.files, &current.provider) {
            Ok(key) => {
                *current.key.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
                info!("TLS certificate reloaded", {
                    cert: Value::from_display(&current.files.cert.display()),
                });
                Ok(())
            }
            Err(e) => {
                warn!("TLS certificate reload failed: keeping the old one", {
                    error: Value::from_display(&e),
                });
                Err(e)
            }
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

/// The client's side: whom it trusts, and the name it expects.
#[derive(Clone)]
pub struct ClientTls {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
    roots: Arc<str>,
}

impl ClientTls {
    /// Trusts the CA certificates in `ca` (PEM), or the system's trust store
    /// when `None`, and expects the server's certificate to be for
    /// `server_name` (a DNS name or an IP address).
    pub fn new(ca: Option<&Path>, server_name: &str) -> Result<ClientTls, TlsError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            TlsError(format!(
                "{server_name:?} is not a DNS name or an IP address to verify"
            ))
        })?;
        let mut roots = RootCertStore::empty();
        let described = match ca {
            Some(path) => {
                for certificate in load_certificates(path)? {
                    roots.add(certificate).map_err(|e| {
                        TlsError(format!("{} is not a CA certificate: {e}", path.display()))
                    })?;
                }
                path.display().to_string()
            }
            None => {
                let found = rustls_native_certs::load_native_certs();
                let (added, _) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                    return Err(TlsError(format!(
                        "no trusted certificates in the system's trust store ({}); \
                         pass --tls-ca with the server's CA",
                        errors.join("; ")
                    )));
                }
                "the system's trust store".to_owned()
            }
        };
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(format!("TLS set-up failed: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(ClientTls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            roots: described.into(),
        })
    }

    /// The host part of `addr` (`host:port`, `[v6]:port`): the name a
    /// certificate is checked against unless `--tls-server-name` says otherwise.
    pub fn host_of(addr: &str) -> &str {
        let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
        host.strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
    }
}

impl fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientTls")
            .field("server_name", &self.server_name)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

/// Two are equal when they are the same set-up (clones of one another).
impl PartialEq for ClientTls {
    fn eq(&self, other: &ClientTls) -> bool {
        Arc::ptr_eq(&self.roots, &other.roots) && self.server_name == other.server_name
    }
}

impl Eq for ClientTls {}

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
