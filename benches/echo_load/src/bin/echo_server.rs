//! Pure-Rust echo server on a tokio current-thread runtime: the machine's
//! ceiling for benches/echo.py (and, with --http, for benches/http.py).
//!
//!   echo_server (--tcp HOST:PORT | --unix PATH) [--http] [--watch-stdin]
//!
//! Prints "ready <address>" on stdout once it listens (with the real port when
//! PORT is 0), then serves until killed. Echo mode reads up to 256 KiB and
//! writes it all back; --http answers every request (headers only, no
//! bodies) with a fixed small keep-alive response. --watch-stdin: exit when
//! stdin reaches EOF (the benchmark harness holds a pipe to it, so the server
//! can't outlive the harness).

use echo_load::{die, header_end, Args, Endpoint, HTTP_RESPONSE};
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

async fn serve(ep: Endpoint, http_mode: bool) -> std::io::Result<()> {
    match ep {
        Endpoint::Tcp(addr) => {
            let l = TcpListener::bind(&addr).await?;
            ready(&l.local_addr()?.to_string());
            loop {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                tokio::spawn(async move {
                    let _ = if http_mode { http(s).await } else { echo(s).await };
                });
            }
        }
        Endpoint::Unix(path) => {
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

fn main() {
    let args = Args::parse(&["http", "watch-stdin", "help"]).unwrap_or_else(|e| die(&e));
    if args.flag("help") {
        println!("usage: echo_server (--tcp HOST:PORT | --unix PATH) [--http] [--watch-stdin]");
        return;
    }
    args.check_known(&["tcp", "unix", "http", "watch-stdin"]).unwrap_or_else(|e| die(&e));
    let ep = args.endpoint().unwrap_or_else(|e| die(&e));
    if args.flag("watch-stdin") {
        // A thread blocked in read(2) costs no CPU time while the server runs.
        std::thread::spawn(|| {
            let mut sink = [0u8; 4096];
            let mut stdin = std::io::stdin();
            while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
            std::process::exit(0);
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    if let Err(e) = rt.block_on(serve(ep, args.flag("http"))) {
        die(&format!("server: {e}"));
    }
}
