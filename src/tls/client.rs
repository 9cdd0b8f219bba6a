//! The client's side of TLS: the roots it trusts and the name it expects
//! the server's certificate to carry.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use futures_rustls::TlsConnector;
use futures_rustls::pki_types::ServerName;
use futures_rustls::rustls::{self, RootCertStore};

use super::{TlsError, load_certificates, provider};

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
        let server_name = parse_server_name(server_name)?;
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

    /// Whether a certificate can be checked against `name`: a DNS name or
    /// an IP address (the command line asks before it loads anything).
    pub fn check_server_name(name: &str) -> Result<(), TlsError> {
        parse_server_name(name).map(drop)
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

fn parse_server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| {
        TlsError(format!(
            "{name:?} is not a DNS name or an IP address to verify"
        ))
    })
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
