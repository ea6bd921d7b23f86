//! TLS for the load generator and the Rust ceiling server (cargo feature
//! `tls`, used by benches/tls.py): OpenSSL through the `openssl` crate, so
//! both ends use the same library as Python's `ssl` module. TLS 1.3 only,
//! with OpenSSL's default cipher suites. The client does not verify the
//! server's certificate: the benchmark generates a throwaway self-signed one.

use openssl::ssl::{Ssl, SslAcceptor, SslConnector, SslContext, SslFiletype, SslMethod,
                   SslVerifyMode, SslVersion};
use std::pin::Pin;
use std::sync::OnceLock;
use tokio::net::TcpStream;
use tokio_openssl::SslStream;

pub type TlsStream = SslStream<TcpStream>;

/// "TLSv1.3 TLS_AES_256_GCM_SHA384", from the first connection that finished its handshake.
static NEGOTIATED: OnceLock<String> = OnceLock::new();

pub fn negotiated() -> Option<&'static str> {
    NEGOTIATED.get().map(|s| s.as_str())
}

fn err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("tls: {e}"))
}

/// The client's context: TLS 1.3, no certificate verification.
pub fn client_context() -> std::io::Result<SslContext> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).map_err(err)?;
    b.set_min_proto_version(Some(SslVersion::TLS1_3)).map_err(err)?;
    b.set_verify(SslVerifyMode::NONE);
    Ok(b.build().into_context())
}

/// The server's context from PEM files: TLS 1.3 only.
pub fn server_context(cert: &str, key: &str) -> std::io::Result<SslContext> {
    let mut b = SslAcceptor::mozilla_modern_v5(SslMethod::tls_server()).map_err(err)?;
    b.set_certificate_chain_file(cert).map_err(err)?;
    b.set_private_key_file(key, SslFiletype::PEM).map_err(err)?;
    b.check_private_key().map_err(err)?;
    Ok(b.build().into_context())
}

/// Client handshake over a connected socket (SNI "localhost").
pub async fn connect(ctx: &SslContext, tcp: TcpStream) -> std::io::Result<TlsStream> {
    let mut ssl = Ssl::new(ctx).map_err(err)?;
    ssl.set_hostname("localhost").map_err(err)?;
    let mut s = SslStream::new(ssl, tcp).map_err(err)?;
    Pin::new(&mut s).connect().await.map_err(err)?;
    if NEGOTIATED.get().is_none() {
        let cipher = s.ssl().current_cipher().map(|c| c.name()).unwrap_or("?");
        let _ = NEGOTIATED.set(format!("{} {}", s.ssl().version_str(), cipher));
    }
    Ok(s)
}

/// Server handshake over an accepted socket.
pub async fn accept(ctx: &SslContext, tcp: TcpStream) -> std::io::Result<TlsStream> {
    let mut s = SslStream::new(Ssl::new(ctx).map_err(err)?, tcp).map_err(err)?;
    Pin::new(&mut s).accept().await.map_err(err)?;
    Ok(s)
}
