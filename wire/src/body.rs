//! Reading a whole HTTP/2 message body (a JSON call's request or answer) up
//! to a limit, on either end. Bytes are released to flow control as they are
//! read, so a sender is never stalled by a body we are about to refuse.

use h2::RecvStream;

#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the body was cut off: {0}")]
    Cut(#[from] h2::Error),
}

/// Appends the body to `out` (so a caller holding secrets can pass a buffer
/// that wipes itself and has room for `limit`: it is never reallocated then).
pub async fn read_into(
    body: &mut RecvStream,
    limit: usize,
    out: &mut Vec<u8>,
) -> Result<(), BodyError> {
    while let Some(chunk) = body.data().await {
        let chunk = chunk?;
        let _ = body.flow_control().release_capacity(chunk.len());
        if out.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        out.extend_from_slice(&chunk);
    }
    Ok(())
}

/// The whole body, at most `limit` bytes.
pub async fn read(body: &mut RecvStream, limit: usize) -> Result<Vec<u8>, BodyError> {
    let mut out = Vec::new();
    read_into(body, limit, &mut out).await?;
    Ok(out)
}
