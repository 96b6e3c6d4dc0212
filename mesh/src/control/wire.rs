//! The push protocol's bytes: length-prefixed JSON frames over any byte stream of the
//! `Net` seam, and the messages both sides exchange (see the protocol in
//! [`crate::control`]). This module owns framing and message types only: not who sends
//! what when (the control plane's connection loop and the proxy's client do).

use std::io;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::view::ProxyConfig;

/// The largest frame either side accepts (a bound on what one message may allocate).
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;

/// From a proxy to the control plane.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToControl {
    /// First message on a connection: who is asking.
    Hello { pod: String, namespace: String },
    /// The proxy applied `version` and now runs it.
    Ack { version: u64 },
    /// The proxy could not apply `version`; it keeps running its last good config.
    Nack { version: u64, reason: String },
}

/// From the control plane to a proxy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ToProxy {
    /// The proxy's config at `version`. `None`: identical to the last config the proxy
    /// ACKed on this connection (only the version moves).
    Push { version: u64, config: Option<ProxyConfig> },
    /// Sent when the stream has been idle for the keepalive interval.
    Ping,
}

/// Writes one frame: a 4-byte big-endian length, then the JSON of `msg`.
pub async fn write<W: AsyncWrite + Unpin, T: Serialize>(w: &mut W, msg: &T) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(io::Error::other)?;
    write_raw(w, &body).await
}

/// Writes one frame whose JSON body is already encoded.
pub async fn write_raw<W: AsyncWrite + Unpin>(w: &mut W, body: &[u8]) -> io::Result<()> {
    if body.len() > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {} bytes exceeds {MAX_FRAME_BYTES}", body.len()),
        ));
    }
    let mut buf = Vec::with_capacity(4 + body.len());
    buf.extend_from_slice(&(body.len() as u32).to_be_bytes());
    buf.extend_from_slice(body);
    w.write_all(&buf).await?;
    w.flush().await
}

/// Reads one frame and decodes it. A clean end of stream before a frame is
/// `UnexpectedEof`.
pub async fn read<R: AsyncRead + Unpin, T: for<'de> Deserialize<'de>>(r: &mut R) -> io::Result<T> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds {MAX_FRAME_BYTES}"),
        ));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_in_order() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        write(&mut a, &ToControl::Hello { pod: "p".into(), namespace: "default".into() }).await.unwrap();
        write(&mut a, &ToControl::Nack { version: 3, reason: "too big".into() }).await.unwrap();
        let first: ToControl = read(&mut b).await.unwrap();
        let second: ToControl = read(&mut b).await.unwrap();
        assert_eq!(first, ToControl::Hello { pod: "p".into(), namespace: "default".into() });
        assert_eq!(second, ToControl::Nack { version: 3, reason: "too big".into() });
    }

    #[tokio::test]
    async fn an_oversized_length_is_refused_before_allocating() {
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = read::<_, ToProxy>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn an_unknown_message_type_is_invalid_data() {
        let (mut a, mut b) = tokio::io::duplex(64);
        write_raw(&mut a, br#"{"type":"reboot"}"#).await.unwrap();
        let err = read::<_, ToProxy>(&mut b).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }
}
