//! Answers on an HTTP/2 stream, for every handler of the gateway's port:
//! JSON and other bodies, error bodies, refused tunnels, and reading a request body
//! within a deadline.

use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Response, StatusCode};
use shimgate_wire::enroll::ErrorBody;
use shimgate_wire::tunnel::{ERROR_HEADER, TunnelError};

/// How long a client may take to send a request body.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// A tunnel or peer session the gateway won't open: the status and the
/// reason header the device maps to its SOCKS reply.
pub(crate) fn refuse(respond: &mut SendResponse<Bytes>, e: TunnelError) {
    if let Ok(resp) = Response::builder()
        .status(e.http_status())
        .header(ERROR_HEADER, e.as_str())
        .body(())
    {
        let _ = respond.send_response(resp, true);
    }
}

pub(crate) fn send_json<T: serde::Serialize>(
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    body: &T,
) {
    if let Ok(json) = serde_json::to_vec(body) {
        send_body(respond, status, "application/json", json);
    }
}

/// An answer of `content_type` with `body`.
pub(crate) fn send_body(
    respond: &mut SendResponse<Bytes>,
    status: StatusCode,
    content_type: &str,
    body: Vec<u8>,
) {
    let Ok(resp) = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(())
    else {
        return;
    };
    if let Ok(mut send) = respond.send_response(resp, false) {
        let _ = send.send_data(Bytes::from(body), true);
    }
}

pub(crate) fn send_error(respond: &mut SendResponse<Bytes>, status: StatusCode, message: &str) {
    send_json(
        respond,
        status,
        &ErrorBody {
            error: message.to_owned(),
        },
    );
}

/// Reads a request body of at most `limit` bytes, within [`BODY_TIMEOUT`].
pub(crate) async fn read_body(
    body: &mut RecvStream,
    limit: usize,
) -> Result<Vec<u8>, &'static str> {
    match tokio::time::timeout(BODY_TIMEOUT, shimgate_wire::body::read(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(shimgate_wire::body::BodyError::TooLarge { .. })) => {
            Err("the request body is too large")
        }
        Ok(Err(shimgate_wire::body::BodyError::Cut(_))) => Err("the request body was cut off"),
        Err(_) => Err("the request body took too long"),
    }
}
