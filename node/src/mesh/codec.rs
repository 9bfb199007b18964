//! Length-prefixed frames, read within a budget: the wire format of every request and
//! response of Hearth's mesh protocols.

use std::sync::Arc;

use futures_util::{AsyncReadExt as _, AsyncWriteExt as _};
use libp2p::{StreamProtocol, request_response};

pub(super) const MAX_FRAMES: usize = 4;

/// Bytes of frames from peers being read, or read and not yet dropped, at most, over
/// every connection and protocol of one node: a frame is read only once its length is
/// reserved here, and a read waits (the peer's writes wait in the transport's
/// flow-control window) while others hold the rest.
pub const MAX_BUFFERED_BYTES: usize = 256 * 1024 * 1024;
/// Bytes of admission messages being read, or read and not yet dropped, at most, over
/// every connection: admission is open to anyone, so it has a budget of its own.
pub const MAX_ADMISSION_BUFFERED_BYTES: usize = 8 * 1024 * 1024;
/// The unit [`Budget`] counts in.
const BUDGET_UNIT: usize = 1024;

/// What frames from peers may hold in memory, shared by every codec of one swarm.
#[derive(Debug, Clone)]
pub struct Budget(Arc<tokio::sync::Semaphore>);

impl Budget {
    /// A budget of `bytes`.
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(tokio::sync::Semaphore::new(bytes / BUDGET_UNIT)))
    }

    /// Reserves `len` bytes (rounded up to [`BUDGET_UNIT`]), waiting while others
    /// hold them.
    async fn take(&self, len: usize) -> std::io::Result<tokio::sync::OwnedSemaphorePermit> {
        let units = u32::try_from(len.div_ceil(BUDGET_UNIT)).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "a frame past any budget")
        })?;
        self.0
            .clone()
            .acquire_many_owned(units)
            .await
            .map_err(|_| std::io::Error::other("the frame budget is closed"))
    }
}

/// The frames of one request or response. A request that broke the protocol's limits
/// (more frames, or a larger frame, than it allows) arrives with no frames and the
/// reason, so that the peer can be told off: the request-response layer does not
/// report a request it could not read. Frames read from a peer hold their share of the
/// [`Budget`] until they are dropped.
#[derive(Debug, Clone, Default)]
pub struct Frames(
    pub Vec<Vec<u8>>,
    Option<String>,
    // Held, never read: dropping the frames gives their bytes back to the budget.
    #[allow(dead_code)] Option<Arc<Vec<tokio::sync::OwnedSemaphorePermit>>>,
);

impl From<Vec<Vec<u8>>> for Frames {
    fn from(frames: Vec<Vec<u8>>) -> Self {
        Self(frames, None, None)
    }
}

impl Frames {
    /// Why the request was refused unread, if it was.
    pub(super) fn violation(&self) -> Option<&str> {
        self.1.as_deref()
    }
}

/// Length-prefixed frames: a count byte (at most 4), then each frame as a `u32`
/// big-endian length and its bytes, at most `max_frame` bytes each, read within the
/// swarm's [`Budget`].
#[derive(Debug, Clone)]
pub struct FrameCodec {
    max_frame: usize,
    max_frames: usize,
    budget: Budget,
}

impl FrameCodec {
    /// A codec refusing frames longer than `max_frame`.
    pub fn new(max_frame: usize, budget: &Budget) -> Self {
        Self {
            max_frame,
            max_frames: MAX_FRAMES,
            budget: budget.clone(),
        }
    }

    /// The same, taking at most one frame per message (for large frames: what a
    /// peer can make this node buffer before the request is even looked at).
    pub fn single(max_frame: usize, budget: &Budget) -> Self {
        Self {
            max_frame,
            max_frames: 1,
            budget: budget.clone(),
        }
    }
}

async fn read_frames<T: futures_util::AsyncRead + Unpin + Send>(
    io: &mut T,
    max_frame: usize,
    max_frames: usize,
    budget: &Budget,
) -> std::io::Result<Frames> {
    let mut count = [0u8; 1];
    io.read_exact(&mut count).await?;
    if usize::from(count[0]) > max_frames {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "more frames than the protocol allows",
        ));
    }
    let mut frames = Vec::with_capacity(usize::from(count[0]));
    let mut held = Vec::with_capacity(usize::from(count[0]));
    for _ in 0..count[0] {
        let mut len = [0u8; 4];
        io.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > max_frame {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "a frame larger than the protocol allows",
            ));
        }
        held.push(budget.take(len).await?);
        frames.push(read_frame(io, len).await?);
    }
    Ok(Frames(frames, None, Some(Arc::new(held))))
}

/// Reads a frame of `len` bytes into a buffer grown as the bytes arrive (doubling, but
/// never past `len`): a length alone reserves nothing, and a frame holds no more memory
/// than its bytes.
async fn read_frame<T: futures_util::AsyncRead + Unpin + Send>(
    io: &mut T,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut frame: Vec<u8> = Vec::new();
    let mut buf = [0u8; 8 * 1024];
    while frame.len() < len {
        let want = (len - frame.len()).min(buf.len());
        let chunk = buf.get_mut(..want).unwrap_or_default();
        let n = io.read(chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if frame.capacity() < frame.len() + n {
            let target = (frame.capacity() * 2).max(frame.len() + n).min(len);
            frame.reserve_exact(target - frame.len());
        }
        frame.extend_from_slice(chunk.get(..n).unwrap_or_default());
    }
    Ok(frame)
}

async fn write_frames<T: futures_util::AsyncWrite + Unpin + Send>(
    io: &mut T,
    frames: Frames,
) -> std::io::Result<()> {
    let count = u8::try_from(frames.0.len().min(MAX_FRAMES)).unwrap_or(0);
    io.write_all(&[count]).await?;
    for frame in frames.0.iter().take(MAX_FRAMES) {
        let len = u32::try_from(frame.len()).unwrap_or(u32::MAX);
        io.write_all(&len.to_be_bytes()).await?;
        io.write_all(frame).await?;
    }
    io.close().await
}

impl request_response::Codec for FrameCodec {
    type Protocol = StreamProtocol;
    type Request = Frames;
    type Response = Frames;

    async fn read_request<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Frames>
    where
        T: futures_util::AsyncRead + Unpin + Send,
    {
        match read_frames(io, self.max_frame, self.max_frames, &self.budget).await {
            Err(err) if err.kind() == std::io::ErrorKind::InvalidData => {
                Ok(Frames(Vec::new(), Some(err.to_string()), None))
            }
            other => other,
        }
    }

    async fn read_response<T>(&mut self, _: &Self::Protocol, io: &mut T) -> std::io::Result<Frames>
    where
        T: futures_util::AsyncRead + Unpin + Send,
    {
        read_frames(io, self.max_frame, self.max_frames, &self.budget).await
    }

    async fn write_request<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        req: Frames,
    ) -> std::io::Result<()>
    where
        T: futures_util::AsyncWrite + Unpin + Send,
    {
        write_frames(io, req).await
    }

    async fn write_response<T>(
        &mut self,
        _: &Self::Protocol,
        io: &mut T,
        res: Frames,
    ) -> std::io::Result<()>
    where
        T: futures_util::AsyncWrite + Unpin + Send,
    {
        write_frames(io, res).await
    }
}

/// An event of one of the mesh's request-response protocols.
pub(super) type ProtocolEvent = request_response::Event<Frames, Frames>;

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_are_read_whole_holding_no_more_than_their_bytes() {
        let budget = Budget::new(MAX_BUFFERED_BYTES);
        let big: Vec<u8> = (0..300_001u32).map(|i| (i % 251) as u8).collect();
        let mut wire = vec![2u8];
        for frame in [&b"hello"[..], &big[..]] {
            wire.extend_from_slice(&u32::try_from(frame.len()).unwrap().to_be_bytes());
            wire.extend_from_slice(frame);
        }
        let frames = read_frames(
            &mut futures_util::io::Cursor::new(&wire),
            1 << 20,
            4,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(frames.0, vec![b"hello".to_vec(), big.clone()]);
        assert!(frames.0[1].capacity() <= big.len());
        // Cut short: an error, not a short frame.
        let cut = &wire[..wire.len() - 1];
        assert!(
            read_frames(&mut futures_util::io::Cursor::new(cut), 1 << 20, 4, &budget)
                .await
                .is_err()
        );
        // Over the limits: refused from the prefix alone.
        assert!(
            read_frames(&mut futures_util::io::Cursor::new(&wire), 1000, 4, &budget)
                .await
                .is_err()
        );
        assert!(
            read_frames(
                &mut futures_util::io::Cursor::new(&wire),
                1 << 20,
                1,
                &budget
            )
            .await
            .is_err()
        );
    }

    /// Frames read hold their bytes of the budget until they are dropped; a read that
    /// would pass it waits, and goes on once the budget is free again.
    #[tokio::test]
    async fn frames_are_read_within_the_budget_and_hold_it_until_dropped() {
        use futures_util::FutureExt as _;

        let budget = Budget::new(100 * BUDGET_UNIT);
        let message = |len: usize| {
            let mut wire = vec![1u8];
            wire.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            wire.extend(std::iter::repeat_n(7u8, len));
            wire
        };
        let (sixty, fifty) = (message(60 * BUDGET_UNIT), message(50 * BUDGET_UNIT));
        let first = read_frames(
            &mut futures_util::io::Cursor::new(&sixty),
            1 << 20,
            4,
            &budget,
        )
        .now_or_never()
        .expect("within the budget: read at once")
        .unwrap();
        let mut cursor = futures_util::io::Cursor::new(&fifty);
        let mut second = Box::pin(read_frames(&mut cursor, 1 << 20, 4, &budget));
        assert!(
            (&mut second).now_or_never().is_none(),
            "60 + 50 units of a budget of 100: the second waits"
        );
        drop(first);
        let second = second.await.unwrap();
        assert_eq!(second.0[0].len(), 50 * BUDGET_UNIT);
    }
}
