//! Certificates made at run time (no private key is committed): a test CA,
//! server certificates it signs (good, expired, not valid yet, soon expiring,
//! for another name), and a
//! second CA the client does not trust. Each set lives in its own temporary
//! directory, removed when dropped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use duplex::server::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

/// A CA that signs server certificates; its certificate is `ca.pem`.
pub struct TestCa {
    dir: TempDir,
    name: String,
    issuer: Issuer<'static, KeyPair>,
}

/// How a server certificate is made.
pub enum Leaf {
    /// For `localhost` and 127.0.0.1, valid now.
    Good,
    /// For `localhost` and 127.0.0.1, expired in 2020.
    Expired,
    /// For `localhost` and 127.0.0.1, valid from 2999.
    NotValidYet,
    /// For `localhost` and 127.0.0.1, valid now and until this long from now
    /// (to the second, as certificates store it).
    ExpiresIn(std::time::Duration),
    /// Valid now, but for `other.example` only.
    OtherName,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let dir = TempDir::new(name);
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA certificate");
        std::fs::write(dir.path().join("ca.pem"), cert.pem()).expect("write CA");
        TestCa {
            dir,
            name: name.to_owned(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA's certificate, PEM.
    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Signs a server certificate and writes it and its key as `<file>.pem`
    /// and `<file>.key`.
    pub fn leaf(&self, file: &str, kind: Leaf) -> TlsFiles {
        let names = match kind {
            Leaf::OtherName => vec!["other.example".to_owned()],
            _ => vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
        };
        let mut params = CertificateParams::new(names).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} {file}", self.name));
        match kind {
            Leaf::Expired => {
                params.not_before = date_time_ymd(2019, 1, 1);
                params.not_after = date_time_ymd(2020, 1, 1);
            }
            Leaf::NotValidYet => {
                params.not_before = date_time_ymd(2999, 1, 1);
                params.not_after = date_time_ymd(3000, 1, 1);
            }
            Leaf::ExpiresIn(left) => {
                let since_epoch = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970");
                params.not_before = date_time_ymd(2019, 1, 1);
                params.not_after = date_time_ymd(1970, 1, 1) + since_epoch + left;
            }
            Leaf::Good | Leaf::OtherName => {}
        }
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed");
        let files = TlsFiles {
            cert: self.dir.path().join(format!("{file}.pem")),
            key: self.dir.path().join(format!("{file}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).expect("write certificate");
        std::fs::write(&files.key, key.serialize_pem()).expect("write key");
        files
    }
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> TempDir {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "duplex-test-{}-{n}-{}",
            std::process::id(),
            label.replace(|c: char| !c.is_ascii_alphanumeric(), "-")
        ));
        std::fs::create_dir_all(&path).expect("temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A rustls client configuration that trusts the CA in `ca`.
pub fn client_config(ca: &Path) -> std::sync::Arc<futures_rustls::rustls::ClientConfig> {
    use futures_rustls::pki_types::CertificateDer;
    use futures_rustls::pki_types::pem::PemObject;
    use futures_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA PEM")).expect("CA certificate");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// A TLS client made with rustls directly (the library's own client is
/// tested through `duplex::client`): connects, verifies against `ca`, and
/// reads whole lines.
pub struct TlsPeer {
    stream: futures::io::BufReader<futures_rustls::client::TlsStream<async_std::net::TcpStream>>,
}

impl TlsPeer {
    pub async fn connect(addr: std::net::SocketAddr, ca: &Path) -> std::io::Result<TlsPeer> {
        TlsPeer::connect_after(addr, ca, b"").await
    }

    /// Connects, sends `prefix` in plain (a PROXY header), then starts TLS.
    pub async fn connect_after(
        addr: std::net::SocketAddr,
        ca: &Path,
        prefix: &[u8],
    ) -> std::io::Result<TlsPeer> {
        use futures::AsyncWriteExt;
        use futures_rustls::pki_types::ServerName;
        let connector = futures_rustls::TlsConnector::from(client_config(ca));
        let mut tcp = async_std::net::TcpStream::connect(addr).await?;
        tcp.write_all(prefix).await?;
        let name = ServerName::try_from("localhost").expect("name");
        let stream = connector.connect(name, tcp).await?;
        Ok(TlsPeer {
            stream: futures::io::BufReader::new(stream),
        })
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        use futures::AsyncWriteExt;
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await.expect("write");
        stream.flush().await.expect("flush");
    }

    /// Sends each of `records` as a TLS record of its own, all in one flush.
    pub async fn send_records<'a>(&mut self, records: impl IntoIterator<Item = &'a [u8]>) {
        let stream = self.stream.get_mut();
        for record in records {
            std::io::Write::write_all(&mut stream.get_mut().1.writer(), record).expect("buffer");
        }
        futures::AsyncWriteExt::flush(stream).await.expect("flush");
    }

    /// The next line, without its newline; empty at the end of the stream.
    pub async fn line(&mut self) -> Vec<u8> {
        use futures::AsyncBufReadExt;
        let mut line = Vec::new();
        super::within(super::PATIENCE, self.stream.read_until(b'\n', &mut line))
            .await
            .expect("a line in time")
            .expect("read");
        if line.last() == Some(&b'\n') {
            line.pop();
        }
        line
    }
}

/// Whether `program` can be run; under CI (`CI=true`) a missing one fails
/// the test, elsewhere the test says it skips.
pub fn have(program: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg("version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok();
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{program} is not installed; .ci/run installs it"
        );
        eprintln!("SKIPPED: {program} is not installed");
    }
    found
}
