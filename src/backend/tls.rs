//! TLS to backends (`rediss://`), with rustls.
//!
//! Verification is on by default: the server's certificate must chain to the configured CA
//! file, or to the system's roots when none is given, and name the URL's host (or
//! `tls.server_name`, which is also sent as SNI). A client certificate can be presented for
//! mutual TLS. Skipping verification takes an explicit `insecure_skip_verify: true`, and is
//! logged as a warning every time a connection is made that way.

use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::config::BackendTls;

/// A ready-to-use TLS client setup for one backend.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    insecure: bool,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("server_name", &self.server_name).field("insecure", &self.insecure).finish()
    }
}

/// Two setups are the same when they were built from the same settings (reloads compare the
/// settings, not the loaded certificates).
impl PartialEq for TlsClient {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.config, &other.config)
    }
}

impl TlsClient {
    /// Loads the files `settings` names and builds the client setup for a server reached as
    /// `host`. The message names the file or field at fault.
    pub fn build(settings: &BackendTls, host: &str) -> Result<TlsClient, (String, String)> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls".to_string(), e.to_string()))?;
        let builder = if settings.insecure_skip_verify {
            builder.dangerous().with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
        } else {
            let mut roots = RootCertStore::empty();
            match &settings.ca_file {
                Some(path) => {
                    let certs = read_certs(path).map_err(|e| ("tls.ca_file".to_string(), e))?;
                    for cert in certs {
                        roots.add(cert).map_err(|e| {
                            ("tls.ca_file".to_string(), format!("{}: not a usable CA certificate: {e}", path.display()))
                        })?;
                    }
                }
                None => {
                    let found = rustls_native_certs::load_native_certs();
                    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                    if added == 0 {
                        return Err((
                            "tls.ca_file".to_string(),
                            "no CA file given and no system root certificates found; set ca_file".to_string(),
                        ));
                    }
                }
            }
            builder.with_root_certificates(roots)
        };
        let config = match (&settings.cert_file, &settings.key_file) {
            (Some(cert), Some(key)) => {
                let chain = read_certs(cert).map_err(|e| ("tls.cert_file".to_string(), e))?;
                let key = read_key(key).map_err(|e| ("tls.key_file".to_string(), e))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| ("tls.key_file".to_string(), format!("does not match tls.cert_file: {e}")))?
            }
            (None, None) => builder.with_no_client_auth(),
            (Some(_), None) => return Err(("tls.key_file".into(), "required with tls.cert_file".into())),
            (None, Some(_)) => return Err(("tls.cert_file".into(), "required with tls.key_file".into())),
        };
        let name = settings.server_name.as_deref().unwrap_or(host);
        let server_name = ServerName::try_from(name.to_string()).map_err(|_| {
            ("tls.server_name".to_string(), format!("\"{name}\" is not a valid DNS name or IP address"))
        })?;
        Ok(TlsClient { config: Arc::new(config), server_name, insecure: settings.insecure_skip_verify })
    }

    /// Runs the TLS handshake over a connected socket.
    pub async fn connect(&self, tcp: TcpStream, backend: &str) -> io::Result<BackendStream> {
        if self.insecure {
            tracing::warn!(backend, "TLS certificate verification is OFF for this backend (tls.insecure_skip_verify)");
        }
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let stream = connector.connect(self.server_name.clone(), tcp).await?;
        Ok(BackendStream::Tls(Box::new(stream)))
    }
}

pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate in it", path.display()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub(crate) fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

/// Accepts any certificate (but still checks the handshake's signatures).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A connection to a backend: plain TCP or TLS over TCP.
pub enum BackendStream {
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for BackendStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for BackendStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            BackendStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            BackendStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            BackendStream::Tcp(s) => s.is_write_vectored(),
            BackendStream::Tls(s) => s.is_write_vectored(),
        }
    }
}

/// The two halves of a [`BackendStream`], for tasks that read and write concurrently.
pub type ReadHalf = Box<dyn AsyncRead + Send + Sync + Unpin>;
pub type WriteHalf = Box<dyn AsyncWrite + Send + Sync + Unpin>;

impl BackendStream {
    /// Splits into independently owned halves (TCP without a lock, TLS with tokio's split).
    pub fn into_split(self) -> (ReadHalf, WriteHalf) {
        match self {
            BackendStream::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            BackendStream::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}
