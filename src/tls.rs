//! TLS on the listeners: rustls with the configured certificate and key
//! (PEM), optional client-certificate authentication, and reloading the
//! certificate without a restart (SIGHUP): each new connection uses the
//! certificate in force when it arrives.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS material that could not be loaded; names the file.
#[derive(Debug, thiserror::Error)]
#[error("{key} {path}: {message}")]
pub struct TlsError {
    pub key: &'static str,
    pub path: String,
    pub message: String,
}

/// Where a listener's TLS material is.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to; `None`: no
    /// client authentication.
    pub client_ca: Option<PathBuf>,
}

/// A listener's TLS configuration, reloadable.
pub struct ServerTls {
    files: TlsFiles,
    current: ArcSwap<ServerConfig>,
    /// Plain HTTP is served on the same port too (the sandbox only).
    plaintext_too: bool,
}

impl ServerTls {
    /// Loads the files; fails naming the file that is wrong.
    pub fn load(files: TlsFiles) -> Result<ServerTls, TlsError> {
        let config = build(&files)?;
        Ok(ServerTls {
            files,
            current: ArcSwap::from_pointee(config),
            plaintext_too: false,
        })
    }

    /// Serves plain HTTP on the same port as well: a connection whose first
    /// byte is not a TLS handshake is served without TLS. For `serve
    /// --sandbox` only, where curl users keep `http://` and the SDKs get
    /// `https://` on one address; a configured listener is TLS only.
    pub fn with_plaintext_too(mut self) -> ServerTls {
        self.plaintext_too = true;
        self
    }

    /// Whether connections are told apart by their first byte.
    pub fn sniffs(&self) -> bool {
        self.plaintext_too
    }

    /// Whether a connection starting with `first` should be served without
    /// TLS.
    pub fn serves_plaintext(&self, first: Option<u8>) -> bool {
        // 0x16: a TLS record of type handshake (the ClientHello).
        self.plaintext_too && first != Some(0x16)
    }

    /// Loads the files again; on failure the certificate in force stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = build(&self.files)?;
        self.current.store(Arc::new(config));
        Ok(())
    }

    /// Completes the handshake of a new connection.
    pub async fn accept(&self, stream: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        let acceptor = TlsAcceptor::from(self.current.load_full());
        tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })?
    }
}

fn err(key: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError {
        key,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| err(key, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| err(key, path, e))?;
    if certs.is_empty() {
        return Err(err(key, path, "no certificate found"));
    }
    Ok(certs)
}

fn build(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let chain = certs("tls_cert", &files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| err("tls_key", &files.key, e))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err("tls_cert", &files.cert, e))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certs("client_ca", ca)? {
                roots.add(c).map_err(|e| err("client_ca", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| err("client_ca", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| err("tls_key", &files.key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
