//! The two body types of the proxy, both streaming frame by frame.
//!
//! * [`UpstreamBody`] carries the client's request body to a backend. It
//!   takes the client's body out of a shared slot on its first poll, which
//!   is what makes connect-failure retries possible without buffering: when
//!   connecting fails the body was never polled, it is still in the slot,
//!   and the next attempt gets it. If the slot is empty, bytes may have been
//!   sent and the request is not retried.
//! * [`ResponseBody`] is what the client gets: the backend's body as is, or
//!   one of our short pages.

use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use http::HeaderValue;
use hyper::body::{Body, Bytes, Frame, Incoming, SizeHint};
use shellwego_net::serve::RequestBody;

use crate::error::{BoxError, DownstreamBodyError, Phase, ProxyError};

/// The client's request body, waiting for the attempt that will send it.
pub(crate) type BodySlot = Arc<Mutex<Option<RequestBody>>>;

/// Take the body out of its slot.
pub(crate) fn take(slot: &BodySlot) -> Option<RequestBody> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// Whether the body is still in its slot: no attempt has polled it.
pub(crate) fn untouched(slot: &BodySlot) -> bool {
    slot.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_some()
}

/// A request body on its way to a backend.
pub(crate) struct UpstreamBody {
    state: UpstreamState,
}

enum UpstreamState {
    /// The request has no body.
    Empty,
    /// Not polled yet; the body is still in the slot.
    Waiting {
        slot: BodySlot,
        hint: SizeHint,
    },
    Streaming(RequestBody),
    Done,
}

impl UpstreamBody {
    pub(crate) fn empty() -> Self {
        Self {
            state: UpstreamState::Empty,
        }
    }

    pub(crate) fn waiting(slot: BodySlot, hint: SizeHint) -> Self {
        Self {
            state: UpstreamState::Waiting { slot, hint },
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                UpstreamState::Empty | UpstreamState::Done => return Poll::Ready(None),
                UpstreamState::Waiting { slot, .. } => match take(slot) {
                    Some(incoming) => this.state = UpstreamState::Streaming(incoming),
                    None => {
                        // Another attempt took the body: this one must not
                        // send a truncated request.
                        this.state = UpstreamState::Done;
                        return Poll::Ready(Some(Err(ProxyError::new(
                            Phase::Ingress,
                            false,
                            "request body already taken by another attempt",
                        )
                        .into())));
                    }
                },
                UpstreamState::Streaming(incoming) => {
                    return match Pin::new(incoming).poll_frame(cx) {
                        Poll::Ready(Some(Err(error))) => {
                            this.state = UpstreamState::Done;
                            Poll::Ready(Some(Err(DownstreamBodyError(error).into())))
                        }
                        Poll::Ready(None) => {
                            this.state = UpstreamState::Done;
                            Poll::Ready(None)
                        }
                        other => other.map_err(|e| DownstreamBodyError(e).into()),
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            UpstreamState::Empty | UpstreamState::Done => true,
            UpstreamState::Waiting { .. } => false,
            UpstreamState::Streaming(incoming) => incoming.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            UpstreamState::Empty | UpstreamState::Done => SizeHint::with_exact(0),
            UpstreamState::Waiting { hint, .. } => *hint,
            UpstreamState::Streaming(incoming) => incoming.size_hint(),
        }
    }
}

/// A response body on its way to the client.
pub(crate) enum ResponseBody {
    /// One of the ingress's own pages, sent in one frame.
    Page(Option<Bytes>),
    /// A backend's body, streamed through.
    Upstream {
        /// The backend's body.
        inner: Incoming,
        /// The request's id, so that a failure mid-body can be logged
        /// against it.
        request_id: HeaderValue,
    },
}

impl ResponseBody {
    pub(crate) fn empty() -> Self {
        Self::Page(None)
    }
}

impl std::fmt::Debug for ResponseBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Page(_) => f.write_str("ResponseBody::Page"),
            Self::Upstream { .. } => f.write_str("ResponseBody::Upstream"),
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            Self::Page(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Upstream { inner, request_id } => {
                let polled = Pin::new(inner).poll_frame(cx);
                if let Poll::Ready(Some(Err(error))) = &polled {
                    // The status line is gone already; hyper aborts the
                    // client's response, which is all that can be done.
                    tracing::warn!(
                        phase = %Phase::Upstream,
                        retry_safe = false,
                        request_id = crate::headers::id_str(request_id),
                        %error,
                        "instance failed while sending the response body"
                    );
                }
                polled
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Page(bytes) => bytes.is_none(),
            Self::Upstream { inner, .. } => inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Page(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Upstream { inner, .. } => inner.size_hint(),
        }
    }
}
