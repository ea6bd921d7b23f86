//! Closed-loop UDP load generator for benches/udp.py.
//!
//!   udp_client --udp HOST:PORT [--conns 10] [--size 64] [--window 1]
//!              [--warmup 1] [--duration 3] [--timeout-ms 200]
//!
//! Opens --conns UDP sockets, each bound to an ephemeral port and connected to
//! the server (so the kernel drops datagrams from anyone else). Each socket
//! keeps --window datagrams of --size bytes in flight: it sends --window at
//! the start and one more for every echo that comes back (ping-pong with the
//! default window of 1). The first 8 bytes of a datagram are its sequence
//! number (little-endian); the rest is a fixed pattern. An echo must have the
//! same length and pattern and a sequence number still in flight.
//!
//! UDP may drop datagrams (on loopback: when a socket buffer overflows), so a
//! datagram whose echo has not come back after --timeout-ms counts as lost and
//! is replaced by a fresh one; an echo that turns up later counts as "late"
//! and is otherwise ignored.
//!
//! Runs on one thread (tokio current-thread runtime), so it stays on the core
//! it is pinned to. Stdout, one line each: "start" when the measured window
//! opens (after --warmup), "end" when it closes (--duration later), then one
//! JSON object. "requests" (also "datagrams") is the number of echoes that
//! came back inside the window; latency is per datagram, from its send to its
//! echo. The process exits right after the JSON. A socket error, a wrong echo
//! or no echo at all in the window makes the JSON carry an "error" key.

use echo_load::{die, json_str, line, measured_window, pct, sorted_latencies, Args};
use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;

const HEADER: usize = 8; // sequence number

#[derive(Default)]
struct Shared {
    /// The measured window, [from, to); None until it opens / closes.
    from: Cell<Option<Instant>>,
    to: Cell<Option<Instant>>,
    lat_ns: RefCell<Vec<u64>>,
    sent: Cell<u64>,
    lost: Cell<u64>,
    late: Cell<u64>,
    errors: RefCell<Vec<String>>,
}

impl Shared {
    fn in_window(&self, t: Instant) -> bool {
        self.from.get().is_some_and(|from| t >= from) && self.to.get().map_or(true, |to| t < to)
    }

    fn bump(&self, c: &Cell<u64>, t: Instant) {
        if self.in_window(t) {
            c.set(c.get() + 1);
        }
    }
}

struct Config {
    server: SocketAddr,
    conns: usize,
    size: usize,
    window: usize,
    warmup: Duration,
    duration: Duration,
    timeout: Duration,
}

/// One client socket: keeps `window` datagrams in flight until the process exits.
struct Flow {
    sock: UdpSocket,
    msg: Vec<u8>,
    next_seq: u64,
    /// (sequence number, send time) of the datagrams in flight; at most `window`.
    in_flight: Vec<(u64, Instant)>,
}

impl Flow {
    async fn send_one(&mut self, sh: &Shared) -> std::io::Result<()> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.msg[..HEADER].copy_from_slice(&seq.to_le_bytes());
        let now = Instant::now();
        self.sock.send(&self.msg).await?;
        self.in_flight.push((seq, now));
        sh.bump(&sh.sent, now);
        Ok(())
    }

    /// Drop datagrams in flight for longer than `timeout` (lost), then top up to `window`.
    async fn refill(&mut self, cfg: &Config, sh: &Shared) -> std::io::Result<()> {
        let now = Instant::now();
        let before = self.in_flight.len();
        self.in_flight.retain(|&(_, sent)| now - sent < cfg.timeout);
        for _ in self.in_flight.len()..before {
            sh.bump(&sh.lost, now);
        }
        while self.in_flight.len() < cfg.window {
            self.send_one(sh).await?;
        }
        Ok(())
    }

    /// Check one echo; Ok(Some(send time)) if it answers a datagram in flight.
    fn accept(&mut self, echo: &[u8]) -> std::io::Result<Option<Instant>> {
        if echo.len() != self.msg.len() || echo[HEADER..] != self.msg[HEADER..] {
            return Err(std::io::Error::other(format!(
                "echo differs from the datagram sent ({} bytes back for {})",
                echo.len(),
                self.msg.len()
            )));
        }
        let seq = u64::from_le_bytes(echo[..HEADER].try_into().unwrap());
        match self.in_flight.iter().position(|&(s, _)| s == seq) {
            Some(i) => Ok(Some(self.in_flight.swap_remove(i).1)),
            None if seq < self.next_seq => Ok(None), // late: already counted as lost
            None => Err(std::io::Error::other("echo of a datagram never sent")),
        }
    }

    async fn run(mut self, cfg: Rc<Config>, sh: Rc<Shared>) -> std::io::Result<()> {
        // One byte more than a datagram, so a longer echo shows up as too long.
        let mut buf = vec![0u8; cfg.size + 1];
        self.refill(&cfg, &sh).await?;
        loop {
            match tokio::time::timeout(cfg.timeout, self.sock.recv(&mut buf)).await {
                Ok(Ok(n)) => {
                    let done = Instant::now();
                    match self.accept(&buf[..n])? {
                        Some(sent) if sh.in_window(done) => {
                            sh.lat_ns.borrow_mut().push((done - sent).as_nanos() as u64)
                        }
                        Some(_) => {}
                        None => sh.bump(&sh.late, done),
                    }
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => {} // nothing came back for a while: refill() counts the losses
            }
            self.refill(&cfg, &sh).await?;
        }
    }
}

async fn open(cfg: &Config, id: usize) -> std::io::Result<Flow> {
    let local: SocketAddr = if cfg.server.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = UdpSocket::bind(local).await?;
    sock.connect(cfg.server).await?;
    let msg = (0..cfg.size).map(|i| ((i + id) % 251) as u8).collect();
    Ok(Flow { sock, msg, next_seq: 0, in_flight: Vec::with_capacity(cfg.window) })
}

async fn run(cfg: Config) -> String {
    let cfg = Rc::new(cfg);
    let sh = Rc::new(Shared::default());
    for id in 0..cfg.conns {
        let flow = match open(&cfg, id).await {
            Ok(f) => f,
            Err(e) => return format!("{{\"error\": {}}}", json_str(&format!("socket: {e}"))),
        };
        let (cfg, sh) = (cfg.clone(), sh.clone());
        tokio::task::spawn_local(async move {
            if let Err(e) = flow.run(cfg, sh.clone()).await {
                // An error after the window closed doesn't matter; we are exiting anyway.
                if sh.to.get().is_none() {
                    sh.errors.borrow_mut().push(e.to_string());
                }
            }
        });
    }
    let secs = measured_window(cfg.warmup, cfg.duration, &sh.from, &sh.to).await;
    let (lat, mean) = sorted_latencies(&sh.lat_ns);
    let n = lat.len();
    let mut j = format!(
        "{{\"mode\": \"udp\", \"endpoint\": {}, \"conns\": {}, \"size\": {}, \"window\": {}, \
         \"seconds\": {:.6}, \"requests\": {n}, \"datagrams\": {n}, \"sent\": {}, \"lost\": {}, \
         \"late\": {}, \"rps\": {:.1}, \"mb_s\": {:.3}, \"mean_us\": {:.2}, \"p50_us\": {:.2}, \
         \"p90_us\": {:.2}, \"p99_us\": {:.2}, \"max_us\": {:.2}",
        json_str(&format!("udp:{}", cfg.server)),
        cfg.conns,
        cfg.size,
        cfg.window,
        secs,
        sh.sent.get(),
        sh.lost.get(),
        sh.late.get(),
        n as f64 / secs,
        (n * cfg.size) as f64 / secs / 1e6,
        mean,
        pct(&lat, 50.0),
        pct(&lat, 90.0),
        pct(&lat, 99.0),
        lat.last().copied().unwrap_or(0) as f64 / 1000.0,
    );
    let errors = sh.errors.borrow();
    if let Some(first) = errors.first() {
        j.push_str(&format!(
            ", \"error\": {}, \"failed_conns\": {}",
            json_str(&format!("{} of {} sockets failed: {first}", errors.len(), cfg.conns)),
            errors.len()
        ));
    } else if n == 0 {
        j.push_str(", \"error\": \"no echo came back in the measured window (server stalled?)\"");
    }
    j.push('}');
    j
}

const USAGE: &str = "usage: udp_client --udp HOST:PORT [--conns 10] [--size 64] [--window 1] \
[--warmup 1] [--duration 3] [--timeout-ms 200]";

fn config(args: &Args) -> Result<Config, String> {
    let target = args.get("udp").ok_or("--udp HOST:PORT is required")?;
    let server = target
        .to_socket_addrs()
        .map_err(|e| format!("--udp {target}: {e}"))?
        .next()
        .ok_or_else(|| format!("--udp {target}: no address"))?;
    let size = args.usize_or("size", 64)?;
    if !(HEADER..=65507).contains(&size) {
        return Err(format!("--size: {HEADER} to 65507 bytes"));
    }
    let cfg = Config {
        server,
        conns: args.usize_or("conns", 10)?.max(1),
        size,
        window: args.usize_or("window", 1)?.max(1),
        warmup: args.secs_or("warmup", 1.0)?,
        duration: args.secs_or("duration", 3.0)?,
        timeout: Duration::from_millis(args.usize_or("timeout-ms", 200)?.max(1) as u64),
    };
    if cfg.duration.is_zero() {
        return Err("--duration must be > 0".into());
    }
    Ok(cfg)
}

fn main() {
    let args = Args::parse(&["help"]).unwrap_or_else(|e| die(&e));
    if args.flag("help") {
        println!("{USAGE}");
        return;
    }
    args.check_known(&["udp", "conns", "size", "window", "warmup", "duration", "timeout-ms"])
        .unwrap_or_else(|e| die(&format!("{e}\n{USAGE}")));
    let cfg = config(&args).unwrap_or_else(|e| die(&e));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    let out = tokio::task::LocalSet::new().block_on(&rt, run(cfg));
    line(&out);
    // Don't wait for datagrams in flight (or a stalled server): exit now.
    std::process::exit(0);
}
