//! Closed-loop load generator for benches/echo.py and benches/http.py.
//!
//!   echo_client (--tcp HOST:PORT | --unix PATH) [--conns 10] [--size 1k]
//!               [--warmup 1] [--duration 3] [--http] [--path /] [--tls]
//!               [--hold 100,1000]
//!
//! Opens --conns connections, then each connection repeats one request at a
//! time: echo mode writes --size bytes and reads exactly that many back
//! (checking they match); --http sends a fixed keep-alive GET and reads one
//! response (headers, then Content-Length bytes of body).
//!
//! Runs on one thread (tokio current-thread runtime), so it stays on the core
//! it is pinned to. Stdout, one line each: "start" when the measured window
//! opens (after --warmup), "end" when it closes (--duration later), then one
//! JSON object. Only requests that complete inside the window are counted.
//! The process exits right after the JSON, without waiting for requests in
//! flight, so a stalled server can't hang it. Any connection error makes the
//! JSON carry an "error" key.
//!
//! --tls (TCP only; built with `--features tls`): every connection does a
//! TLS 1.3 handshake first (OpenSSL, no certificate check); the JSON then
//! names the negotiated version and cipher ("tls").
//!
//! --hold N1,N2,...: the memory mode of benches/tls.py. Opens N1 connections
//! (handshake plus one --size echo each, 32 at a time), prints "held <total>",
//! waits for a line on stdin, opens N2 more, and so on; after the last step it
//! waits for one more line (or EOF), prints one JSON line and exits. Held
//! connections stay idle.

use echo_load::{die, json_str, line, measured_window, pct, sorted_latencies, header_end, Args, Endpoint};
use std::io::BufRead;
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

#[derive(Default)]
struct Shared {
    /// The measured window, [from, to); None until it opens / closes.
    from: Cell<Option<Instant>>,
    to: Cell<Option<Instant>>,
    lat_ns: RefCell<Vec<u64>>,
    errors: RefCell<Vec<String>>,
}

impl Shared {
    fn record(&self, sent: Instant, done: Instant) {
        let Some(from) = self.from.get() else { return };
        if done < from || self.to.get().is_some_and(|to| done >= to) {
            return;
        }
        self.lat_ns.borrow_mut().push((done - sent).as_nanos() as u64);
    }
}

enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
    #[cfg(feature = "tls")]
    Tls(echo_load::tls::TlsStream),
}

/// The client's TLS context when --tls is given (always None without the `tls` feature).
#[cfg(feature = "tls")]
type TlsCtx = Option<openssl::ssl::SslContext>;
#[cfg(not(feature = "tls"))]
type TlsCtx = Option<std::convert::Infallible>;

fn negotiated_tls() -> Option<&'static str> {
    #[cfg(feature = "tls")]
    return echo_load::tls::negotiated();
    #[cfg(not(feature = "tls"))]
    None
}

async fn connect(ep: &Endpoint, tls: &TlsCtx) -> std::io::Result<Conn> {
    match ep {
        Endpoint::Tcp(a) => {
            let s = TcpStream::connect(a.as_str()).await?;
            s.set_nodelay(true)?;
            #[cfg(feature = "tls")]
            if let Some(ctx) = tls {
                return Ok(Conn::Tls(echo_load::tls::connect(ctx, s).await?));
            }
            let _ = tls;
            Ok(Conn::Tcp(s))
        }
        Endpoint::Unix(p) => Ok(Conn::Unix(UnixStream::connect(p).await?)),
    }
}

/// connect(), retried until `deadline`: the listener may be up but its backlog busy.
async fn connect_retry(ep: &Endpoint, tls: &TlsCtx, deadline: Instant) -> Result<Conn, String> {
    loop {
        match connect(ep, tls).await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(format!("connect {ep}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Echo: write the message and read the echo concurrently (so a server that
/// stops reading while its writes are blocked can't deadlock us), then check it.
async fn echo_loop<R, W>(mut r: R, mut w: W, size: usize, sh: Rc<Shared>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let mut buf = vec![0u8; size];
    loop {
        let sent = Instant::now();
        tokio::try_join!(w.write_all(&msg), r.read_exact(&mut buf))?;
        let done = Instant::now();
        if buf != msg {
            return Err(std::io::Error::other("echoed bytes differ from the message sent"));
        }
        sh.record(sent, done);
    }
}

/// HTTP: one GET at a time; read headers, then Content-Length bytes of body.
async fn http_loop<R, W>(mut r: R, mut w: W, path: String, sh: Rc<Shared>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let req = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: echo_client\r\n\r\n");
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let sent = Instant::now();
        w.write_all(req.as_bytes()).await?;
        let head = loop {
            if let Some(end) = header_end(&buf) {
                break end;
            }
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("server closed the connection"));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let text = String::from_utf8_lossy(&buf[..head]).to_string();
        if !text.starts_with("HTTP/1.1 200") && !text.starts_with("HTTP/1.0 200") {
            let line = text.lines().next().unwrap_or("").to_string();
            return Err(std::io::Error::other(format!("bad status line {line:?}")));
        }
        let len = text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or_else(|| std::io::Error::other("response without Content-Length"))?;
        while buf.len() < head + len {
            let n = r.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::Error::other("server closed the connection mid-body"));
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..head + len);
        sh.record(sent, Instant::now());
    }
}

async fn drive(conn: Conn, http: Option<String>, size: usize, sh: Rc<Shared>) {
    let res = match (conn, http) {
        (Conn::Tcp(mut s), None) => {
            let (r, w) = s.split();
            echo_loop(r, w, size, sh.clone()).await
        }
        (Conn::Unix(mut s), None) => {
            let (r, w) = s.split();
            echo_loop(r, w, size, sh.clone()).await
        }
        (Conn::Tcp(mut s), Some(p)) => {
            let (r, w) = s.split();
            http_loop(r, w, p, sh.clone()).await
        }
        (Conn::Unix(mut s), Some(p)) => {
            let (r, w) = s.split();
            http_loop(r, w, p, sh.clone()).await
        }
        #[cfg(feature = "tls")]
        (Conn::Tls(s), http) => {
            // One TLS session can't be borrowed as two halves: split() locks it per poll.
            let (r, w) = tokio::io::split(s);
            match http {
                None => echo_loop(r, w, size, sh.clone()).await,
                Some(p) => http_loop(r, w, p, sh.clone()).await,
            }
        }
    };
    if let Err(e) = res {
        // An error after the window closed doesn't matter; we are exiting anyway.
        if sh.to.get().is_none() {
            sh.errors.borrow_mut().push(e.to_string());
        }
    }
}

struct Config {
    ep: Endpoint,
    conns: usize,
    size: usize,
    warmup: Duration,
    duration: Duration,
    http: Option<String>,
    tls: TlsCtx,
    hold: Option<Vec<usize>>,
}

async fn run(cfg: Config) -> String {
    let sh = Rc::new(Shared::default());
    let mut conns = Vec::with_capacity(cfg.conns);
    let deadline = Instant::now() + Duration::from_secs(10);
    for _ in 0..cfg.conns {
        match connect_retry(&cfg.ep, &cfg.tls, deadline).await {
            Ok(c) => conns.push(c),
            Err(e) => return format!("{{\"error\": {}}}", json_str(&e)),
        }
    }
    for c in conns {
        tokio::task::spawn_local(drive(c, cfg.http.clone(), cfg.size, sh.clone()));
    }
    let secs = measured_window(cfg.warmup, cfg.duration, &sh.from, &sh.to).await;
    let (lat, mean) = sorted_latencies(&sh.lat_ns);
    let n = lat.len();
    let payload = if cfg.http.is_some() { 0 } else { cfg.size };
    let mut j = format!(
        "{{\"mode\": \"{}\", \"endpoint\": {}, \"conns\": {}, \"size\": {}, \"seconds\": {:.6}, \
         \"requests\": {}, \"rps\": {:.1}, \"mb_s\": {:.3}, \"mean_us\": {:.2}, \"p50_us\": {:.2}, \
         \"p90_us\": {:.2}, \"p99_us\": {:.2}, \"max_us\": {:.2}",
        if cfg.http.is_some() { "http" } else { "echo" },
        json_str(&cfg.ep.to_string()),
        cfg.conns,
        payload,
        secs,
        n,
        n as f64 / secs,
        (n * payload) as f64 / secs / 1e6,
        mean,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    if let Some(t) = negotiated_tls() {
        j.push_str(&format!(", \"tls\": {}", json_str(t)));
    }
    let errors = sh.errors.borrow();
    if let Some(first) = errors.first() {
        j.push_str(&format!(
            ", \"error\": {}, \"failed_conns\": {}",
            json_str(&format!("{} of {} connections failed: {first}", errors.len(), cfg.conns)),
            errors.len()
        ));
    } else if n == 0 {
        j.push_str(", \"error\": \"no request completed in the measured window (server stalled?)\"");
    }
    j.push('}');
    j
}

/// One connection of --hold: connect (and handshake), echo `size` bytes once.
async fn open_and_ping(ep: Endpoint, tls: TlsCtx, size: usize) -> Result<Conn, String> {
    async fn ping<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, size: usize) -> std::io::Result<()> {
        let msg = vec![b'x'; size];
        let mut buf = vec![0u8; size];
        s.write_all(&msg).await?;
        s.read_exact(&mut buf).await?;
        if buf != msg {
            return Err(std::io::Error::other("echoed bytes differ from the message sent"));
        }
        Ok(())
    }
    let mut c = connect_retry(&ep, &tls, Instant::now() + Duration::from_secs(10)).await?;
    let res = match &mut c {
        Conn::Tcp(s) => ping(s, size).await,
        Conn::Unix(s) => ping(s, size).await,
        #[cfg(feature = "tls")]
        Conn::Tls(s) => ping(s, size).await,
    };
    res.map_err(|e| format!("echo on a new connection: {e}"))?;
    Ok(c)
}

/// --hold: open the connections step by step and keep them idle (see the module doc).
async fn hold(cfg: Config, steps: Vec<usize>) -> String {
    const BATCH: usize = 32;
    let mut held: Vec<Conn> = Vec::new();
    let stdin = std::io::stdin();
    for step in steps {
        let mut left = step;
        while left > 0 {
            let n = left.min(BATCH);
            let tasks: Vec<_> = (0..n)
                .map(|_| tokio::task::spawn_local(open_and_ping(cfg.ep.clone(), cfg.tls.clone(), cfg.size)))
                .collect();
            for t in tasks {
                match t.await {
                    Ok(Ok(c)) => held.push(c),
                    Ok(Err(e)) => return format!("{{\"error\": {}}}", json_str(&e)),
                    Err(e) => return format!("{{\"error\": {}}}", json_str(&e.to_string())),
                }
            }
            left -= n;
        }
        line(&format!("held {}", held.len()));
        // Blocking is fine here: idle connections need nothing from this side.
        let mut go = String::new();
        if stdin.lock().read_line(&mut go).map_or(true, |n| n == 0) {
            break;
        }
    }
    let tls = negotiated_tls().map_or("null".to_string(), json_str);
    format!("{{\"mode\": \"hold\", \"held\": {}, \"tls\": {tls}}}", held.len())
}

const USAGE: &str = "usage: echo_client (--tcp HOST:PORT | --unix PATH) [--conns 10] [--size 1k] \
[--warmup 1] [--duration 3] [--http] [--path /] [--tls] [--hold N1,N2,...]";

fn tls_context(wanted: bool, ep: &Endpoint) -> TlsCtx {
    if !wanted {
        return None;
    }
    if matches!(ep, Endpoint::Unix(_)) {
        die("--tls works over --tcp only");
    }
    #[cfg(feature = "tls")]
    return Some(echo_load::tls::client_context().unwrap_or_else(|e| die(&e.to_string())));
    #[cfg(not(feature = "tls"))]
    die("--tls: this echo_client was built without TLS (cargo build --release --features tls)")
}

fn hold_steps(v: Option<&str>) -> Option<Vec<usize>> {
    let steps: Vec<usize> = v?
        .split(',')
        .map(|s| echo_load::parse_size(s).filter(|&n| n > 0))
        .collect::<Option<_>>()
        .unwrap_or_else(|| die("--hold: comma-separated counts > 0"));
    Some(steps)
}

fn main() {
    let args = Args::parse(&["http", "tls", "help"]).unwrap_or_else(|e| die(&e));
    if args.flag("help") {
        println!("{USAGE}");
        return;
    }
    args.check_known(&["tcp", "unix", "conns", "size", "warmup", "duration", "http", "path",
                       "tls", "hold"])
        .unwrap_or_else(|e| die(&format!("{e}\n{USAGE}")));
    let ep = args.endpoint().unwrap_or_else(|e| die(&e));
    let cfg = Config {
        tls: tls_context(args.flag("tls"), &ep),
        hold: hold_steps(args.get("hold")),
        ep,
        conns: args.usize_or("conns", 10).unwrap_or_else(|e| die(&e)).max(1),
        size: args.usize_or("size", 1024).unwrap_or_else(|e| die(&e)).max(1),
        warmup: args.secs_or("warmup", 1.0).unwrap_or_else(|e| die(&e)),
        duration: args.secs_or("duration", 3.0).unwrap_or_else(|e| die(&e)),
        http: args.flag("http").then(|| args.get("path").unwrap_or("/").to_string()),
    };
    if cfg.duration.is_zero() {
        die("--duration must be > 0");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    let local = tokio::task::LocalSet::new();
    let out = match cfg.hold.clone() {
        Some(steps) => local.block_on(&rt, hold(cfg, steps)),
        None => local.block_on(&rt, run(cfg)),
    };
    line(&out);
    // Don't wait for requests in flight (or a stalled server): exit now.
    std::process::exit(0);
}
