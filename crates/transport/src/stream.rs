//! [`Stream`]: one connection type for plain TCP and TLS, on both sides, so
//! session code is written once.
//!
//! A plain server connection also watches its first bytes: a TLS ClientHello
//! there means a TLS client dialled the plain port. The stream then writes
//! the caller's hint (in clear, since that client cannot speak anything else
//! here) and fails the read with a clear error instead of handing a binary
//! handshake to the session as if it were chat text or an upload header.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsStream;

/// A connection, plain or TLS.
#[derive(Debug)]
pub struct Stream {
    inner: Inner,
    peer: SocketAddr,
}

#[derive(Debug)]
enum Inner {
    Plain {
        tcp: TcpStream,
        /// Until the first bytes arrive: what to write back if they are a
        /// TLS handshake.
        sniff: Option<Arc<[u8]>>,
    },
    Tls(Box<TlsStream<TcpStream>>),
}

/// Whether `bytes` (the first a peer sent) start a TLS handshake record:
/// content type 22, then major version 3. No chat line, upload header
/// (`0x89 UPL`) or legacy size (ASCII digits) starts this way.
pub fn looks_like_tls(bytes: &[u8]) -> bool {
    matches!(bytes, [0x16] | [0x16, 0x03, ..])
}

impl Stream {
    /// A plain connection that is used as it is.
    pub fn plain(tcp: TcpStream, peer: SocketAddr) -> Self {
        Stream {
            inner: Inner::Plain { tcp, sniff: None },
            peer,
        }
    }

    /// A plain server connection that answers a TLS handshake with `hint`.
    pub(crate) fn plain_watched(tcp: TcpStream, peer: SocketAddr, hint: Arc<[u8]>) -> Self {
        Stream {
            inner: Inner::Plain {
                tcp,
                sniff: Some(hint),
            },
            peer,
        }
    }

    pub(crate) fn tls(tls: TlsStream<TcpStream>, peer: SocketAddr) -> Self {
        Stream {
            inner: Inner::Tls(Box::new(tls)),
            peer,
        }
    }

    /// Whether this connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.inner, Inner::Tls(_))
    }

    /// The other end's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match &self.inner {
            Inner::Plain { tcp, .. } => tcp,
            Inner::Tls(tls) => tls.get_ref().0,
        }
    }

    /// Turns Nagle's algorithm off (the protocols send short replies).
    pub fn set_nodelay(&self, on: bool) -> io::Result<()> {
        self.tcp().set_nodelay(on)
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let peer = self.peer;
        match &mut self.inner {
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            Inner::Plain { tcp, sniff } => {
                let before = buf.filled().len();
                let polled = Pin::new(&mut *tcp).poll_read(cx, buf);
                if let (Poll::Ready(Ok(())), Some(hint)) = (&polled, sniff.as_ref()) {
                    let fresh = &buf.filled()[before..];
                    if fresh.is_empty() {
                        return polled;
                    }
                    if looks_like_tls(fresh) {
                        // A fresh socket's send buffer has room for a short hint.
                        let _ = tcp.try_write(hint);
                        buf.set_filled(before);
                        *sniff = None;
                        tracing::info!(%peer, "a TLS client dialled the plain port; sent the hint and closed");
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a TLS client dialled the plain port",
                        )));
                    }
                    *sniff = None;
                }
                polled
            }
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain { tcp, .. } => Pin::new(tcp).poll_write(cx, buf),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.inner {
            Inner::Plain { tcp, .. } => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.inner {
            Inner::Plain { tcp, .. } => tcp.is_write_vectored(),
            Inner::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain { tcp, .. } => Pin::new(tcp).poll_flush(cx),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.inner {
            Inner::Plain { tcp, .. } => Pin::new(tcp).poll_shutdown(cx),
            Inner::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_record_header_is_recognised_and_protocol_openings_are_not() {
        assert!(looks_like_tls(&[0x16, 0x03, 0x01, 0x02, 0x00]));
        assert!(looks_like_tls(&[0x16]));
        assert!(!looks_like_tls(b"hello\n"));
        assert!(!looks_like_tls(b"12345"));
        assert!(!looks_like_tls(&[0x89, b'U', b'P', b'L']));
        assert!(!looks_like_tls(&[0x16, b'a']));
        assert!(!looks_like_tls(b""));
    }
}
