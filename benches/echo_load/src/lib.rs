//! Shared bits of the echo_load binaries (`echo_client`, `echo_server`, `udp_client`,
//! `udp_server`): a tiny argument parser and the endpoint type (TCP `host:port`
//! or a Unix socket path); with the `tls` feature, the TLS set-up in `tls`.

use std::time::Duration;

#[cfg(feature = "tls")]
pub mod tls;

/// Where to connect or listen.
#[derive(Clone, Debug)]
pub enum Endpoint {
    Tcp(String),
    Unix(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "tcp:{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{p}"),
        }
    }
}

/// `--name value` / `--name=value` / `--flag` arguments, nothing fancier.
pub struct Args {
    items: Vec<(String, Option<String>)>,
}

impl Args {
    /// Parse `std::env::args()`. `flags` are the options that take no value.
    pub fn parse(flags: &[&str]) -> Result<Args, String> {
        let mut items = Vec::new();
        let mut it = std::env::args().skip(1);
        while let Some(arg) = it.next() {
            let Some(name) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument {arg:?}"));
            };
            if let Some((k, v)) = name.split_once('=') {
                items.push((k.to_string(), Some(v.to_string())));
            } else if flags.contains(&name) {
                items.push((name.to_string(), None));
            } else {
                let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
                items.push((name.to_string(), Some(v)));
            }
        }
        Ok(Args { items })
    }

    pub fn check_known(&self, known: &[&str]) -> Result<(), String> {
        match self.items.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(format!("unknown option --{k}")),
            None => Ok(()),
        }
    }

    pub fn flag(&self, name: &str) -> bool {
        self.items.iter().any(|(k, _)| k == name)
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.items.iter().rev().find(|(k, _)| k == name).and_then(|(_, v)| v.as_deref())
    }

    pub fn endpoint(&self) -> Result<Endpoint, String> {
        match (self.get("tcp"), self.get("unix")) {
            (Some(a), None) => Ok(Endpoint::Tcp(a.to_string())),
            (None, Some(p)) => Ok(Endpoint::Unix(p.to_string())),
            _ => Err("give exactly one of --tcp HOST:PORT or --unix PATH".into()),
        }
    }

    pub fn usize_or(&self, name: &str, default: usize) -> Result<usize, String> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => parse_size(v).ok_or_else(|| format!("--{name}: bad number {v:?}")),
        }
    }

    pub fn secs_or(&self, name: &str, default: f64) -> Result<Duration, String> {
        let v = match self.get(name) {
            None => default,
            Some(v) => v.parse::<f64>().map_err(|_| format!("--{name}: bad seconds {v:?}"))?,
        };
        if !(v >= 0.0 && v.is_finite()) {
            return Err(format!("--{name}: must be >= 0"));
        }
        Ok(Duration::from_secs_f64(v))
    }
}

/// "1024", "1k"/"1K"/"1KiB" (x1024), "1m"/"1MiB" (x1024²).
pub fn parse_size(s: &str) -> Option<usize> {
    let s = s.trim();
    let lower = s.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower.strip_suffix("kib").or(lower.strip_suffix('k')) {
        (n.to_string(), 1024)
    } else if let Some(n) = lower.strip_suffix("mib").or(lower.strip_suffix('m')) {
        (n.to_string(), 1024 * 1024)
    } else {
        (lower.clone(), 1)
    };
    num.trim().parse::<usize>().ok().map(|n| n * mult)
}

/// The fixed response of the HTTP mode of `echo_server` (same bytes as benches/http.py's).
pub const HTTP_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, World!";

/// Position just past the first "\r\n\r\n" in `buf`, if any.
pub fn header_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// Exits with status 2 and a message on stderr.
pub fn die(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(2)
}

/// Prints one line to stdout and flushes it at once (the parent reads markers live).
pub fn line(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// `s` as a JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The p-th percentile of `sorted` (ns), in µs, nearest-rank.
pub fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[i.clamp(1, sorted.len()) - 1] as f64 / 1000.0
}

/// The measured window: waits out `warmup`, marks `from` and prints "start", waits
/// `duration`, marks `to` and prints "end" (the parent reads the server's CPU time at each
/// marker). Returns the window's length in seconds.
pub async fn measured_window(
    warmup: Duration,
    duration: Duration,
    from: &std::cell::Cell<Option<std::time::Instant>>,
    to: &std::cell::Cell<Option<std::time::Instant>>,
) -> f64 {
    tokio::time::sleep(warmup).await;
    let start = std::time::Instant::now();
    from.set(Some(start));
    line("start");
    tokio::time::sleep(duration).await;
    let end = std::time::Instant::now();
    to.set(Some(end));
    line("end");
    (end - start).as_secs_f64()
}

/// The latencies (ns) taken out of `samples` and sorted, with their mean in µs.
pub fn sorted_latencies(samples: &std::cell::RefCell<Vec<u64>>) -> (Vec<u64>, f64) {
    let mut lat = std::mem::take(&mut *samples.borrow_mut());
    lat.sort_unstable();
    let n = lat.len();
    let mean = if n > 0 { lat.iter().sum::<u64>() as f64 / n as f64 / 1000.0 } else { 0.0 };
    (lat, mean)
}

/// Exits the process when stdin reaches EOF (the parent went away): a thread blocked in
/// read(2) costs no CPU time while the server runs.
pub fn exit_when_stdin_closes() {
    std::thread::spawn(|| {
        let mut sink = [0u8; 4096];
        let mut stdin = std::io::stdin();
        while matches!(std::io::Read::read(&mut stdin, &mut sink), Ok(n) if n > 0) {}
        std::process::exit(0);
    });
}
