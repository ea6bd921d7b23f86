//! TCP, UDP and Unix stream sockets that are native inside a future tokioloop polls
//! (non-blocking sockets on the loop's own reactor, registered through the ABI's descriptor
//! functions: no tokio reactor, no thread, the wake comes from the loop's turn) and
//! `tokio::net`'s elsewhere. The streams implement tokio's `AsyncRead`/`AsyncWrite` in both
//! modes, so tokio's `io` helpers and codecs work on them.
//!
//! The mode is picked when a socket is made: the async `connect`s and `bind`s run at their
//! future's first poll, the synchronous `from_std`s and `UnixListener::bind` where they are
//! called, so inside a natively polled task they make native sockets. A native socket must stay in
//! the tokioloop tasks of its loop: polled anywhere else its I/O fails with an error naming the
//! type; dropped anywhere else it is closed but its registration with the loop is leaked (see
//! `registration`), so drop it where it was used.
//!
//! Public: extension authors use [`TcpStream`], [`TcpListener`], [`UdpSocket`], [`UnixStream`]
//! and [`UnixListener`]; `registration` (the ABI side of a native socket) and `stream_io` (a
//! native stream's syscalls) are this module's own. Unix datagram sockets are not here.

mod registration;
mod stream_io;
mod tcp_listener;
mod tcp_stream;
mod udp_socket;
#[cfg(unix)]
mod unix_listener;
#[cfg(unix)]
mod unix_stream;

pub use tcp_listener::TcpListener;
pub use tcp_stream::TcpStream;
pub use udp_socket::UdpSocket;
#[cfg(unix)]
pub use unix_listener::UnixListener;
#[cfg(unix)]
pub use unix_stream::UnixStream;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Mode;
    use std::io;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn outside_a_native_task_the_sockets_are_tokios_and_round_trip() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let echoed = runtime.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0".parse().unwrap()).await?;
            assert_eq!(listener.mode(), Mode::Fallback);
            let address = listener.local_addr()?;
            let server = tokio::spawn(async move {
                let (mut accepted, _) = listener.accept().await?;
                let mut got = Vec::new();
                accepted.read_to_end(&mut got).await?;
                accepted.write_all(&got).await?;
                Ok::<_, io::Error>(())
            });
            let mut stream = TcpStream::connect(address).await?;
            assert_eq!((stream.mode(), stream.peer_addr()?), (Mode::Fallback, address));
            stream.set_nodelay(true)?;
            assert!(stream.nodelay()?);
            stream.write_all(b"ping").await?;
            stream.shutdown().await?;
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await?;
            server.await.unwrap()?;
            Ok::<_, io::Error>(back)
        });
        assert_eq!(echoed.unwrap(), b"ping");
    }

    #[test]
    fn outside_a_native_task_unix_sockets_are_tokios_and_round_trip() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let directory = std::env::temp_dir().join(format!("tokioloop-rs-unix-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("echo.sock");
        let _ = std::fs::remove_file(&path);
        let echoed = runtime.block_on(async {
            let listener = UnixListener::bind(&path)?;
            assert_eq!(listener.mode(), Mode::Fallback);
            assert_eq!(listener.local_path()?.as_deref(), Some(path.as_path()));
            let server = tokio::spawn(async move {
                let (mut accepted, peer) = listener.accept().await?;
                assert_eq!(peer, None, "the client is unnamed");
                let mut got = Vec::new();
                accepted.read_to_end(&mut got).await?;
                accepted.write_all(&got).await?;
                Ok::<_, io::Error>(())
            });
            let mut stream = UnixStream::connect(&path).await?;
            assert_eq!(stream.peer_path()?.as_deref(), Some(path.as_path()));
            stream.write_all(b"ping").await?;
            stream.shutdown().await?;
            let mut back = Vec::new();
            stream.read_to_end(&mut back).await?;
            server.await.unwrap()?;
            Ok::<_, io::Error>(back)
        });
        std::fs::remove_dir_all(&directory).unwrap();
        assert_eq!(echoed.unwrap(), b"ping");
    }

    #[test]
    fn outside_a_native_task_udp_sockets_are_tokios_and_exchange_datagrams() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async {
            let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
            let (one, other) = (UdpSocket::bind(any_port).await?, UdpSocket::bind(any_port).await?);
            assert_eq!(one.mode(), Mode::Fallback);
            one.connect(other.local_addr()?).await?;
            assert_eq!(one.peer_addr()?, other.local_addr()?);
            one.send(b"ping").await?;
            let mut buffer = [0; 16];
            let (length, sender) = other.recv_from(&mut buffer).await?;
            other.send_to(&buffer[..length], sender).await?;
            let echoed = one.recv(&mut buffer).await?;
            Ok::<_, io::Error>((sender == one.local_addr()?, buffer[..echoed].to_vec()))
        });
        assert_eq!(outcome.unwrap(), (true, b"ping".to_vec()));
    }
}
