//! TLS for every Polyport listener, on rustls (aws-lc-rs).
//!
//! One [`Tls`] per TLS listener implements the core's
//! [`Handshake`](polyport_core::adapter::Handshake) seam, so no protocol crate links a TLS
//! library: HTTPS (HTTP/1.1 and h2 by ALPN, WSS included), gRPC, MQTTS, AMQPS and STOMP
//! over TLS all go through the same code.
//!
//! - **Files, reloaded in place.** The certificate chain and key come from PEM files.
//!   [`Tls::reload`] (the server calls it on `SIGHUP`) reads them again and swaps the
//!   configuration atomically: handshakes from then on use the new certificate, open
//!   connections keep theirs. A reload that fails (a half-written file, a key that does
//!   not match) keeps the old configuration and says why.
//! - **Client certificates (mTLS).** With a `client_ca`, clients are asked for a
//!   certificate signed by it — required, or optional — and the verified certificate's
//!   subject common name travels with the connection as
//!   [`Peer::certificate`](polyport_core::adapter::Peer), which every protocol takes as
//!   the caller's identity when it sent no credentials (Mosquitto's
//!   `use_identity_as_username`, RabbitMQ's EXTERNAL mechanism).
//! - TLS 1.2 and 1.3 only, rustls' safe cipher suites; no client renegotiation (rustls
//!   has none).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use futures::future::BoxFuture;
use polyport_core::adapter::{Handshake, Secured};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

/// Whether clients must show a certificate signed by the client CA.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ClientAuth {
    /// A client without a certificate is let in (and authenticates as it otherwise would);
    /// one with a certificate the CA did not sign is refused.
    Optional,
    /// The handshake fails without a certificate signed by the CA.
    #[default]
    Required,
}

/// Where a listener's certificate, key and client CA live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM: the server certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the CA(s) client certificates must be signed by; none asks for no certificate.
    pub client_ca: Option<PathBuf>,
    /// With a `client_ca`: whether a certificate is required.
    pub client_auth: ClientAuth,
    /// Application protocols offered by ALPN, most preferred first (`h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
}

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM section of the kind needed.
    #[error("{what} {}: {why}", path.display())]
    File {
        /// Which file (`certificate`, `private key`, `client CA`).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        why: String,
    },
    /// rustls refused the combination (a key that does not match the certificate, say).
    #[error("{0}")]
    Config(String),
}

/// What a loaded certificate says of itself, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject, as `CN=…, O=…`.
    pub subject: String,
    /// When it expires.
    pub not_after: SystemTime,
}

impl std::fmt::Display for CertInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let left = self
            .not_after
            .duration_since(SystemTime::now())
            .map(|d| format!("expires in {} days", d.as_secs() / 86_400))
            .unwrap_or_else(|_| "EXPIRED".into());
        write!(f, "{} ({left})", self.subject)
    }
}

/// One TLS listener's configuration, swappable while it serves.
pub struct Tls {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
    info: ArcSwap<CertInfo>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("settings", &self.settings)
            .field("certificate", &*self.info.load())
            .finish()
    }
}

impl Tls {
    /// Reads the files and builds the configuration.
    pub fn load(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let (config, info) = build(&settings)?;
        Ok(Arc::new(Self {
            settings,
            current: ArcSwap::from_pointee(config),
            info: ArcSwap::from_pointee(info),
        }))
    }

    /// Reads the files again and, if they make a valid configuration, serves new
    /// handshakes with it; on error the old one stays.
    pub fn reload(&self) -> Result<CertInfo, TlsError> {
        let (config, info) = build(&self.settings)?;
        self.current.store(Arc::new(config));
        self.info.store(Arc::new(info.clone()));
        Ok(info)
    }

    /// The certificate being served.
    pub fn certificate(&self) -> CertInfo {
        (**self.info.load()).clone()
    }

    /// The files this listener reads.
    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    /// Whether every client must show a certificate.
    pub fn requires_client_certificate(&self) -> bool {
        self.settings.client_ca.is_some() && self.settings.client_auth == ClientAuth::Required
    }
}

impl Handshake for Tls {
    fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
    ) -> BoxFuture<'static, std::io::Result<Secured>> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.current.load_full());
        Box::pin(async move {
            let stream = acceptor.accept(tcp).await?;
            let subject = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|c| common_name(c.as_ref()));
            Ok((Box::new(stream) as _, subject))
        })
    }
}

/// The subject common name of a (verified) certificate: the name the client goes by.
fn common_name(der: &[u8]) -> Option<Arc<str>> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?;
    Some(Arc::from(cn))
}

fn file_error(what: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, pem_why(e)))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, pem_why(e)))?;
    if certs.is_empty() {
        return Err(file_error(
            what,
            path,
            "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
}

fn pem_why(e: rustls::pki_types::pem::Error) -> String {
    match e {
        rustls::pki_types::pem::Error::Io(e) => e.to_string(),
        rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM section of that kind".into(),
        other => format!("is not valid PEM ({other:?})"),
    }
}

fn build(s: &TlsSettings) -> Result<(ServerConfig, CertInfo), TlsError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = read_certs("certificate", &s.cert)?;
    let key = PrivateKeyDer::from_pem_file(&s.key).map_err(|e| {
        file_error(
            "private key",
            &s.key,
            match e {
                rustls::pki_types::pem::Error::NoItemsFound => {
                    "holds no PEM private key (-----BEGIN PRIVATE KEY-----)".into()
                }
                e => pem_why(e),
            },
        )
    })?;
    let info = describe(&chain[0]).ok_or_else(|| {
        file_error(
            "certificate",
            &s.cert,
            "its first certificate is not valid X.509",
        )
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &s.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("client CA", ca)? {
                roots
                    .add(c)
                    .map_err(|e| file_error("client CA", ca, e.to_string()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = match s.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| file_error("client CA", ca, e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        TlsError::Config(format!(
            "{} and {} do not make a certificate rustls can serve: {e}",
            s.cert.display(),
            s.key.display()
        ))
    })?;
    config.alpn_protocols = s.alpn.clone();
    Ok((config, info))
}

fn describe(cert: &CertificateDer<'_>) -> Option<CertInfo> {
    let (_, c) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let secs = u64::try_from(c.validity().not_after.timestamp()).unwrap_or(0);
    Some(CertInfo {
        subject: c.subject().to_string(),
        not_after: SystemTime::UNIX_EPOCH + Duration::from_secs(secs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Pki {
        dir: PathBuf,
        ca_pem: String,
        ca: Issuer<'static, KeyPair>,
    }

    impl Pki {
        fn new(name: &str) -> Self {
            let dir =
                std::env::temp_dir().join(format!("polyport-tls-{name}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "test CA");
            let key = KeyPair::generate().unwrap();
            let ca_pem = params.self_signed(&key).unwrap().pem();
            Self {
                dir,
                ca_pem,
                ca: Issuer::new(params, key),
            }
        }

        /// Writes `{name}.crt` / `{name}.key`, signed by the CA, and returns the paths.
        fn issue(&self, name: &str, cn: &str) -> (PathBuf, PathBuf) {
            let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            let key = KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.ca).unwrap();
            let (c, k) = (
                self.dir.join(format!("{name}.crt")),
                self.dir.join(format!("{name}.key")),
            );
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            (c, k)
        }

        fn ca_file(&self) -> PathBuf {
            let p = self.dir.join("ca.crt");
            std::fs::write(&p, &self.ca_pem).unwrap();
            p
        }

        fn client(&self, cert: Option<(&Path, &Path)>) -> tokio_rustls::TlsConnector {
            let mut roots = RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_file(self.ca_file()).unwrap())
                .unwrap();
            let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
            let b = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots);
            let config = match cert {
                None => b.with_no_client_auth(),
                Some((c, k)) => b
                    .with_client_auth_cert(
                        CertificateDer::pem_file_iter(c)
                            .unwrap()
                            .map(|c| c.unwrap())
                            .collect(),
                        PrivateKeyDer::from_pem_file(k).unwrap(),
                    )
                    .unwrap(),
            };
            tokio_rustls::TlsConnector::from(Arc::new(config))
        }
    }

    /// A one-connection echo server over `tls`; returns its port and what the server saw
    /// as the client's certificate name.
    async fn serve_once(
        tls: Arc<Tls>,
    ) -> (
        u16,
        tokio::task::JoinHandle<std::io::Result<Option<Arc<str>>>>,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (tcp, _) = l.accept().await?;
            let (mut io, who) = tls.handshake(tcp).await?;
            let mut b = [0u8; 4];
            io.read_exact(&mut b).await?;
            io.write_all(&b).await?;
            io.flush().await?;
            Ok(who)
        });
        (port, task)
    }

    async fn talk(c: &tokio_rustls::TlsConnector, port: u16) -> std::io::Result<String> {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut s = c.connect(name, tcp).await?;
        let served = s.get_ref().1.peer_certificates().unwrap()[0].clone();
        s.write_all(b"ping").await?;
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await?;
        assert_eq!(&b, b"ping");
        Ok(describe(&served).unwrap().subject)
    }

    fn settings(c: PathBuf, k: PathBuf) -> TlsSettings {
        TlsSettings {
            cert: c,
            key: k,
            client_ca: None,
            client_auth: ClientAuth::Required,
            alpn: Vec::new(),
        }
    }

    #[tokio::test]
    async fn reload_serves_the_new_certificate_and_keeps_the_old_one_on_error() {
        let pki = Pki::new("reload");
        let (c, k) = pki.issue("server", "first");
        let tls = Tls::load(settings(c.clone(), k.clone())).unwrap();
        let client = pki.client(None);
        let (port, task) = serve_once(tls.clone()).await;
        assert_eq!(talk(&client, port).await.unwrap(), "CN=first");
        task.await.unwrap().unwrap();

        pki.issue("server", "second");
        assert_eq!(tls.reload().unwrap().subject, "CN=second");
        let (port, task) = serve_once(tls.clone()).await;
        assert_eq!(talk(&client, port).await.unwrap(), "CN=second");
        task.await.unwrap().unwrap();

        // A key that is not the certificate's: refused, and the old pair stays.
        let (_, other_key) = pki.issue("other", "other");
        std::fs::copy(&other_key, &k).unwrap();
        let e = tls.reload().unwrap_err().to_string();
        assert!(e.contains("do not make a certificate"), "{e}");
        let (port, task) = serve_once(tls.clone()).await;
        assert_eq!(talk(&client, port).await.unwrap(), "CN=second");
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_client_certificate_names_the_client_and_is_required_when_asked() {
        let pki = Pki::new("mtls");
        let (c, k) = pki.issue("server", "server");
        let (cc, ck) = pki.issue("alice", "alice");
        let mut s = settings(c, k);
        s.client_ca = Some(pki.ca_file());
        let tls = Tls::load(s.clone()).unwrap();
        assert!(tls.requires_client_certificate());

        let (port, task) = serve_once(tls.clone()).await;
        talk(&pki.client(Some((&cc, &ck))), port).await.unwrap();
        assert_eq!(task.await.unwrap().unwrap().as_deref(), Some("alice"));

        let (port, task) = serve_once(tls.clone()).await;
        let _ = talk(&pki.client(None), port).await;
        assert!(
            task.await.unwrap().is_err(),
            "a client without a certificate got in"
        );

        s.client_auth = ClientAuth::Optional;
        let tls = Tls::load(s).unwrap();
        let (port, task) = serve_once(tls).await;
        talk(&pki.client(None), port).await.unwrap();
        assert_eq!(task.await.unwrap().unwrap(), None);
    }

    #[test]
    fn bad_files_say_which_file_and_what_is_wrong() {
        let pki = Pki::new("bad");
        let (c, k) = pki.issue("server", "server");
        let missing = pki.dir.join("missing.crt");
        let e = Tls::load(settings(missing, k.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("certificate ") && e.contains("missing.crt"),
            "{e}"
        );
        let e = Tls::load(settings(k.clone(), k.clone()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("holds no PEM certificate"), "{e}");
        let e = Tls::load(settings(c.clone(), c.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("private key") && e.contains("no PEM private key"),
            "{e}"
        );
    }
}
