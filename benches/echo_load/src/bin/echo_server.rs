//! Pure-Rust echo server on a tokio current-thread runtime: the machine's
//! ceiling for benches/echo.py (and, with --http, for benches/http.py).
//!
//!   echo_server (--tcp HOST:PORT | --unix PATH) [--http] [--watch-stdin]
//!               [--tls-cert PEM --tls-key PEM]
//!
//! Prints "ready <address>" on stdout once it listens (with the real port when
//! PORT is 0), then serves until killed. Echo mode reads up to 256 KiB and
//! writes it all back; --http answers every request (headers only, no
//! bodies) with a fixed small keep-alive response. --watch-stdin: exit when
//! stdin reaches EOF (the benchmark harness holds a pipe to it, so the server
//! can't outlive the harness). --tls-cert/--tls-key (TCP only; built with
//! `--features tls`): TLS 1.3 on every connection, the ceiling of benches/tls.py.

use echo_load::{die, exit_when_stdin_closes, header_end, Args, Endpoint, HTTP_RESPONSE};
use std::io::Write;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};

const BUF: usize = 256 * 1024;

async fn echo<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        s.write_all(&buf[..n]).await?;
    }
}

async fn http<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(8192);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut out: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let n = s.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some(end) = header_end(&buf[used..]) {
            used += end;
            out.extend_from_slice(HTTP_RESPONSE);
        }
        buf.drain(..used);
        if !out.is_empty() {
            s.write_all(&out).await?;
            out.clear();
        }
    }
}

fn ready(addr: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {addr}");
    let _ = out.flush();
}

/// The server's TLS context when --tls-cert/--tls-key are given.
#[cfg(feature = "tls")]
type TlsCtx = Option<openssl::ssl::SslContext>;
#[cfg(not(feature = "tls"))]
type TlsCtx = Option<std::convert::Infallible>;

async fn serve(ep: Endpoint, http_mode: bool, tls: TlsCtx) -> std::io::Result<()> {
    match ep {
        Endpoint::Tcp(addr) => {
            let l = TcpListener::bind(&addr).await?;
            ready(&l.local_addr()?.to_string());
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                #[cfg(feature = "tls")]
                if let Some(ctx) = tls.clone() {
                    tokio::spawn(async move {
                        let Ok(s) = echo_load::tls::accept(&ctx, s).await else { return };
                        let _ = if http_mode { http(s).await } else { echo(s).await };
                    });
                    continue;
                }
                tokio::spawn(async move {
                    let _ = if http_mode { http(s).await } else { echo(s).await };
                });
            }
        }
        Endpoint::Unix(path) => {
            let _ = tls;
            let _ = std::fs::remove_file(&path);
            let l = UnixListener::bind(&path)?;
            ready(&path);
            loop {
                let (s, _) = l.accept().await?;
                tokio::spawn(async move {
                    let _ = if http_mode { http(s).await } else { echo(s).await };
                });
            }
        }
    }
}

fn tls_context(cert: Option<&str>, key: Option<&str>, ep: &Endpoint) -> TlsCtx {
    let (cert, key) = match (cert, key) {
        (None, None) => return None,
        (Some(c), Some(k)) => (c, k),
        _ => die("give both --tls-cert and --tls-key"),
    };
    if matches!(ep, Endpoint::Unix(_)) {
        die("TLS works over --tcp only");
    }
    #[cfg(feature = "tls")]
    return Some(echo_load::tls::server_context(cert, key).unwrap_or_else(|e| die(&e.to_string())));
    #[cfg(not(feature = "tls"))]
    {
        let _ = (cert, key);
        die("this echo_server was built without TLS (cargo build --release --features tls)")
    }
}

fn main() {
    let args = Args::parse(&["http", "watch-stdin", "help"]).unwrap_or_else(|e| die(&e));
    if args.flag("help") {
        println!("usage: echo_server (--tcp HOST:PORT | --unix PATH) [--http] [--watch-stdin] \
                  [--tls-cert PEM --tls-key PEM]");
        return;
    }
    args.check_known(&["tcp", "unix", "http", "watch-stdin", "tls-cert", "tls-key"])
        .unwrap_or_else(|e| die(&e));
    let ep = args.endpoint().unwrap_or_else(|e| die(&e));
    let tls = tls_context(args.get("tls-cert"), args.get("tls-key"), &ep);
    if args.flag("watch-stdin") {
        exit_when_stdin_closes();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    if let Err(e) = rt.block_on(serve(ep, args.flag("http"), tls)) {
        die(&format!("server: {e}"));
    }
}
