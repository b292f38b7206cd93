//! TLS on the client listener: clients connect to tandem over TLS with the certificate and key
//! named by the top-level `tls` section. The files are read on every (re)load, so rotating a
//! certificate is rewriting the files and reloading; connections already open keep theirs.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;

/// How long a client may take to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A ready-to-use TLS server setup.
#[derive(Clone)]
pub struct ServerTls {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerTls")
    }
}

/// Compared by the files' settings elsewhere; two loaded setups are never "the same".
impl PartialEq for ServerTls {
    fn eq(&self, _: &Self) -> bool {
        false
    }
}

impl ServerTls {
    /// Loads the certificate chain and key. The error names the field at fault.
    pub fn build(settings: &crate::config::ListenTls) -> Result<ServerTls, (String, String)> {
        use crate::backend::tls::{read_certs, read_key};
        let chain = read_certs(&settings.cert_file).map_err(|e| ("tls.cert_file".to_string(), e))?;
        let key = read_key(&settings.key_file).map_err(|e| ("tls.key_file".to_string(), e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ("tls".to_string(), e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| ("tls.key_file".to_string(), format!("does not match tls.cert_file: {e}")))?;
        Ok(ServerTls { acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)) })
    }

    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<tokio_rustls::server::TlsStream<TcpStream>> {
        self.acceptor.accept(tcp).await
    }
}
