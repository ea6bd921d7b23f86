//! Pure-Rust UDP echo server on a tokio current-thread runtime: the machine's
//! ceiling for benches/udp.py.
//!
//!   udp_server --udp HOST:PORT [--watch-stdin]
//!
//! One socket, like the Python servers: every datagram received is sent
//! straight back to its sender (`recv_from`, then `send_to`). Prints
//! "ready <address>" on stdout once bound (with the real port when PORT is 0),
//! then serves until killed. --watch-stdin: exit when stdin reaches EOF (the
//! benchmark harness holds a pipe to it, so the server can't outlive it).

use echo_load::{die, exit_when_stdin_closes, Args};
use std::io::Write;
use tokio::net::UdpSocket;

async fn serve(addr: &str) -> std::io::Result<()> {
    let sock = UdpSocket::bind(addr).await?;
    let mut out = std::io::stdout();
    let _ = writeln!(out, "ready {}", sock.local_addr()?);
    let _ = out.flush();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, peer) = match sock.recv_from(&mut buf).await {
            Ok(got) => got,
            // An ICMP error left by an earlier send (a client that went away)
            // concerns that client only (Linux reports none on an unconnected
            // socket anyway): keep serving.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
            Err(e) => return Err(e),
        };
        // A failed send concerns one peer only (as in the Python servers): drop it.
        let _ = sock.send_to(&buf[..n], peer).await;
    }
}

fn main() {
    let args = Args::parse(&["watch-stdin", "help"]).unwrap_or_else(|e| die(&e));
    if args.flag("help") {
        println!("usage: udp_server --udp HOST:PORT [--watch-stdin]");
        return;
    }
    args.check_known(&["udp", "watch-stdin"]).unwrap_or_else(|e| die(&e));
    let addr = args.get("udp").unwrap_or_else(|| die("--udp HOST:PORT is required")).to_string();
    if args.flag("watch-stdin") {
        exit_when_stdin_closes();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| die(&format!("runtime: {e}")));
    if let Err(e) = rt.block_on(serve(&addr)) {
        die(&format!("server: {e}"));
    }
}
