//! Mutual TLS plumbing shared by the controller and the agents.
//!
//! - [`Identity`]: a certificate chain and its private key, loaded from PEM.
//! - [`server_config`] / [`client_config`]: rustls configurations that trust
//!   only the Navette CA. A server built with [`ClientAuth::Required`] refuses
//!   any connection without a valid client certificate; the enrolment
//!   listener alone uses [`ClientAuth::None`].
//! - [`ReloadableServerConfig`] and [`incoming`]: a TLS listener whose
//!   certificate can be replaced while it runs (agents renew theirs), feeding
//!   tonic's `serve_with_incoming`. Handshakes run concurrently and failures
//!   are logged with the peer address, never passed on.
//! - [`channel`]: a tonic channel over our own rustls connector, dialing an
//!   address while verifying a fixed server name (agents are verified by host
//!   id, not by whatever address they have today).

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tonic::transport::{Channel, Endpoint};

/// Errors while loading or using TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{what}: no PEM {kind} found")]
    Pem { what: String, kind: &'static str },
    #[error("{what}: invalid PEM: {source}")]
    BadPem {
        what: String,
        source: rustls_pki_types::pem::Error,
    },
    #[error("CA certificate {what} is not usable as a trust anchor: {source}")]
    Anchor { what: String, source: rustls::Error },
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

/// Installs the process-wide rustls crypto provider (ring). Call once, early
/// in `main` and in tests; calling again is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A certificate chain (leaf first) and its private key.
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl Identity {
    /// Parses PEM text; `what` names the source in errors.
    pub fn from_pem(cert_pem: &str, key_pem: &str, what: &str) -> Result<Identity, TlsError> {
        let chain = certificates_from_pem(cert_pem, what)?;
        let key =
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|source| match source {
                rustls_pki_types::pem::Error::NoItemsFound => TlsError::Pem {
                    what: what.to_owned(),
                    kind: "private key",
                },
                source => TlsError::BadPem {
                    what: what.to_owned(),
                    source,
                },
            })?;
        Ok(Identity { chain, key })
    }

    /// Loads a certificate file and a key file.
    pub fn load(cert: &Path, key: &Path) -> Result<Identity, TlsError> {
        let cert_pem = read(cert)?;
        let key_pem = read(key)?;
        Identity::from_pem(&cert_pem, &key_pem, &cert.display().to_string())
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Parses every certificate in PEM text.
pub fn certificates_from_pem(
    pem: &str,
    what: &str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadPem {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            what: what.to_owned(),
            kind: "certificate",
        });
    }
    Ok(certs)
}

/// A root store holding the Navette CA certificate(s) from PEM text.
pub fn ca_roots(ca_pem: &str, what: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates_from_pem(ca_pem, what)? {
        roots.add(cert).map_err(|source| TlsError::Anchor {
            what: what.to_owned(),
            source,
        })?;
    }
    Ok(Arc::new(roots))
}

/// Loads the CA root store from a PEM file.
pub fn load_ca_roots(path: &Path) -> Result<Arc<RootCertStore>, TlsError> {
    ca_roots(&read(path)?, &path.display().to_string())
}

/// Whether a server asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    /// Every connection must present a certificate signed by the CA.
    Required,
    /// No client certificate (the enrolment listener only).
    None,
}

/// A rustls server configuration for gRPC (ALPN h2).
pub fn server_config(
    roots: Arc<RootCertStore>,
    identity: Identity,
    client_auth: ClientAuth,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let builder = rustls::ServerConfig::builder();
    let builder = match client_auth {
        ClientAuth::Required => {
            // No CA hints: a client then always sends its certificate, and a
            // foreign or expired one is refused with a precise alert instead
            // of the client silently sending none.
            let verifier = WebPkiClientVerifier::builder(roots)
                .clear_root_hint_subjects()
                .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        ClientAuth::None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A rustls client configuration presenting `identity` and trusting `roots`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    identity: Option<Identity>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let mut config = match identity {
        Some(identity) => builder.with_client_auth_cert(identity.chain, identity.key)?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A server configuration that can be swapped while the listener runs; new
/// connections use the newest one.
#[derive(Clone, Debug)]
pub struct ReloadableServerConfig(Arc<RwLock<Arc<rustls::ServerConfig>>>);

impl ReloadableServerConfig {
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        ReloadableServerConfig(Arc::new(RwLock::new(config)))
    }

    pub fn replace(&self, config: Arc<rustls::ServerConfig>) {
        match self.0.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }

    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        match self.0.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts TCP connections on `listener`, completes the TLS handshakes
/// concurrently with the current `config`, and yields the established
/// streams for `tonic::transport::Server::serve_with_incoming`.
///
/// `listener_name` appears in the log line of every refused handshake.
pub fn incoming(
    listener: TcpListener,
    config: ReloadableServerConfig,
    listener_name: &'static str,
) -> impl tokio_stream::Stream<Item = Result<TlsStream<TcpStream>, io::Error>> {
    let (sender, receiver) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(message = "accept failed", listener = listener_name, %error);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
            let handshake_sender = sender.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = handshake_sender.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => {
                        // A port probe (load balancer, readiness check).
                        tracing::debug!(
                            message = "connection closed during the TLS handshake",
                            listener = listener_name,
                            %peer
                        );
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(
                            message = "TLS handshake refused",
                            listener = listener_name,
                            %peer,
                            %error
                        );
                    }
                    Err(_) => {
                        tracing::warn!(
                            message = "TLS handshake timed out",
                            listener = listener_name,
                            %peer
                        );
                    }
                }
            });
            if sender.is_closed() {
                break;
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(receiver)
}

/// HTTP/2 flow-control windows of a channel's streams and connection: how
/// much a peer may send before this side has consumed it.
pub const STREAM_WINDOW: u32 = 8 << 20;
pub const CONNECTION_WINDOW: u32 = 32 << 20;
/// The largest HTTP/2 frame a channel accepts.
pub const MAX_FRAME: u32 = 1 << 20;

/// A lazily connecting gRPC channel to `address` over mutual TLS, verifying
/// that the server's certificate carries `server_name`.
pub fn channel(
    address: SocketAddr,
    server_name: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Channel, TlsError> {
    channel_with(address, server_name, move || config.clone())
}

/// [`channel`], asking `config` for the client configuration at each
/// connection it opens: after a certificate renewal, a channel that
/// reconnects presents the new certificate.
pub fn channel_with(
    address: SocketAddr,
    server_name: &str,
    config: impl Fn() -> Arc<rustls::ClientConfig> + Clone + Send + Sync + 'static,
) -> Result<Channel, TlsError> {
    let server_name = ServerName::try_from(server_name.to_owned())
        .map_err(|_| TlsError::ServerName(server_name.to_owned()))?;
    // The URI only names the peer for HTTP/2; the connector below dials.
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|_| TlsError::ServerName(address.to_string()))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // Transfers stream megabytes per message: HTTP/2's default window
        // (64 KiB) would have the sender wait for a window update every
        // 64 KiB. What a stream may have in flight is bounded by these.
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        // Frames of up to 1 MiB (not 16 KiB): a chunk crosses HTTP/2 in a
        // few frames.
        .max_frame_size(MAX_FRAME)
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10));
    let service = tower::service_fn(move |_uri: http::Uri| {
        let connector = tokio_rustls::TlsConnector::from(config());
        let server_name = server_name.clone();
        async move {
            let tcp = TcpStream::connect(address).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await.map_err(explain)?;
            Primed::new(tls).await.map(TokioIo::new)
        }
    });
    Ok(endpoint.connect_with_connector_lazy(service))
}

/// How long a client waits for the server's first bytes after the handshake.
const FIRST_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A client TLS stream whose first bytes were read during connect.
///
/// With TLS 1.3 the client finishes its handshake before the server has
/// checked the client certificate; a refusal arrives as an alert on the
/// first read, which HTTP/2 would report as a bare "connection closed".
/// Reading the server's first bytes (its HTTP/2 settings) while connecting
/// turns a refusal into an error that says why, and replays the bytes.
struct Primed<S> {
    first: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Primed<S> {
    async fn new(mut inner: S) -> io::Result<Primed<S>> {
        use tokio::io::AsyncReadExt;
        let mut first = vec![0u8; 1024];
        let read = tokio::time::timeout(FIRST_READ_TIMEOUT, inner.read(&mut first))
            .await
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the server sent nothing after the TLS handshake",
                )
            })?
            .map_err(explain)?;
        if read == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "the server closed the connection right after the TLS handshake",
            ));
        }
        first.truncate(read);
        Ok(Primed {
            first,
            offset: 0,
            inner,
        })
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Primed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        if self.offset < self.first.len() {
            let available = &self.first[self.offset..];
            let n = available.len().min(buf.remaining());
            buf.put_slice(&available[..n]);
            self.offset += n;
            if self.offset == self.first.len() {
                self.first = Vec::new();
                self.offset = 0;
            }
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Primed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> std::task::Poll<io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Rewrites TLS failures into sentences a person can act on.
fn explain(error: io::Error) -> io::Error {
    use rustls::{AlertDescription, CertificateError, Error};
    let Some(tls) = error.get_ref().and_then(|e| e.downcast_ref::<Error>()) else {
        return error;
    };
    let why = match tls {
        Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate and none was presented"
        }
        Error::AlertReceived(AlertDescription::UnknownCA) => {
            "the server refused the client certificate: it was not issued by the server's CA"
        }
        Error::AlertReceived(AlertDescription::CertificateExpired) => {
            "the server refused the client certificate: it has expired (or is not valid yet)"
        }
        Error::AlertReceived(AlertDescription::BadCertificate | AlertDescription::DecryptError) => {
            "the server refused the client certificate as invalid"
        }
        Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        ) => "the server's certificate was not issued by the trusted CA",
        Error::InvalidCertificate(CertificateError::Expired) => {
            "the server's certificate has expired"
        }
        Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => "the server's certificate is not for the expected name (is this the right host?)",
        _ => return error,
    };
    io::Error::new(error.kind(), format!("{why} ({tls})"))
}
