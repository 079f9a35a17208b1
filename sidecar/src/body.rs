//! The response body: a few `Bytes` parts yielded as they are (log bytes are
//! slices of the map, never copied), or a stream of parts fed by a task (SSE).

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// A response body made of shared byte parts.
pub struct ShapeBody {
    kind: Kind,
}

enum Kind {
    Parts { parts: VecDeque<Bytes>, remaining: u64 },
    Stream { rx: mpsc::Receiver<Vec<Bytes>>, pending: VecDeque<Bytes> },
}

impl ShapeBody {
    /// No body.
    pub fn empty() -> ShapeBody {
        ShapeBody::parts(Vec::new())
    }

    /// A body of the given parts, in order; its length is known up front.
    pub fn parts(parts: Vec<Bytes>) -> ShapeBody {
        let parts: VecDeque<Bytes> = parts.into_iter().filter(|p| !p.is_empty()).collect();
        let remaining = parts.iter().map(|p| p.len() as u64).sum();
        ShapeBody { kind: Kind::Parts { parts, remaining } }
    }

    /// A body fed through a channel; it ends when the sender is dropped.
    pub fn stream(rx: mpsc::Receiver<Vec<Bytes>>) -> ShapeBody {
        ShapeBody { kind: Kind::Stream { rx, pending: VecDeque::new() } }
    }

    /// A body holding one buffer.
    pub fn from_bytes(b: impl Into<Bytes>) -> ShapeBody {
        ShapeBody::parts(vec![b.into()])
    }
}

impl Body for ShapeBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        match &mut self.get_mut().kind {
            Kind::Parts { parts, remaining } => Poll::Ready(parts.pop_front().map(|p| {
                *remaining -= p.len() as u64;
                Ok(Frame::data(p))
            })),
            Kind::Stream { rx, pending } => loop {
                if let Some(p) = pending.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(p))));
                }
                match rx.poll_recv(cx) {
                    Poll::Ready(Some(batch)) => pending.extend(batch.into_iter().filter(|p| !p.is_empty())),
                    Poll::Ready(None) => return Poll::Ready(None),
                    Poll::Pending => return Poll::Pending,
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Parts { parts, .. } => parts.is_empty(),
            Kind::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Parts { remaining, .. } => SizeHint::with_exact(*remaining),
            Kind::Stream { .. } => SizeHint::default(),
        }
    }
}
