//! One HTTP/2-over-TLS connection to the gateway, and JSON calls on it.
//!
//! [`connect`] dials, does the TLS handshake and the HTTP/2 handshake, and
//! starts the task that drives the connection (with keepalive pings, so a
//! gateway that vanished without closing is noticed). With a device
//! certificate it then asks the gateway who we are: in TLS 1.3 a refused
//! client certificate only shows on the first read, and this makes a revoked
//! device find out at connect time, with the reason.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, Response, StatusCode};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use shimgate_wire::enroll::{ErrorBody, MAX_BODY, WHOAMI_PATH, WhoAmI};
use shimgate_wire::h2tuning;
use shimgate_wire::origin::{ORIGIN_HEADER, Origin};
use shimgate_wire::tunnel::{ERROR_HEADER, TunnelError};
use shimgate_wire::udpchannel::ConnSecret;
use tokio::io::BufReader;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const PING_EVERY: Duration = Duration::from_secs(15);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the gateway at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the gateway revoked this device's certificate: ask an admin, or enroll again")]
    Revoked,
    #[error(
        "this device's certificate has expired (it renews itself while `shimgate up` runs): check this machine's clock, or enroll again"
    )]
    Expired,
    #[error("the gateway refused this device's certificate ({0}): enroll again with a new code")]
    Rejected(String),
    #[error("TLS with the gateway failed: {0}")]
    Tls(String),
    #[error("the gateway answered {status}: {message}")]
    Refused { status: StatusCode, message: String },
    #[error("the connection to the gateway failed: {0}")]
    Protocol(String),
}

impl ClientError {
    /// Reads what went wrong out of an error's text (rustls alerts arrive
    /// wrapped in I/O and HTTP/2 errors, which keep the message).
    fn classify(addr: &str, e: &dyn std::fmt::Display) -> ClientError {
        let text = e.to_string();
        if text.contains("CertificateRevoked") {
            ClientError::Revoked
        } else if text.contains("CertificateExpired") {
            ClientError::Expired
        } else if [
            "AccessDenied",
            "UnknownCA",
            "BadCertificate",
            "CertificateUnknown",
            "CertificateExpired",
            "CertificateRequired",
            "DecryptError",
        ]
        .iter()
        .any(|a| text.contains(a))
        {
            ClientError::Rejected(text)
        } else if text.contains(crate::tls::PIN_MISMATCH) || text.contains("certificate") {
            ClientError::Tls(text)
        } else {
            ClientError::Unreachable {
                addr: addr.to_owned(),
                reason: text,
            }
        }
    }
}

/// A live connection: clone `send` to open streams; `closed` fires when the
/// connection has ended, and [`Connection::end`] then says how (streams only
/// see "connection closed"; the reason, such as a TLS alert, is there).
pub struct Connection {
    pub send: SendRequest<Bytes>,
    pub closed: CancellationToken,
    ended_with: EndWatch,
    /// For the UDP channels of associations opened on this connection.
    pub channel: Option<Arc<ChannelBase>>,
}

/// What one connection gives its UDP associations' channels
/// (`wire::udpchannel`): the secret their keys come from, and the gateway's
/// address, whose UDP port the gateway names when it grants a channel.
pub struct ChannelBase {
    pub secret: ConnSecret,
    pub gateway: std::net::IpAddr,
}

/// How a connection to the gateway ended, as the task driving it saw it.
#[derive(Debug, Clone)]
enum Ended {
    /// The gateway closed it cleanly.
    ByGateway,
    /// The gateway stopped answering keepalive pings.
    Silent,
    /// A connection-level error (TLS alert, I/O error, protocol error).
    Error(String),
}

/// Where the end of one connection is recorded; cheap to clone.
#[derive(Clone, Default)]
pub struct EndWatch(Arc<Mutex<Option<Ended>>>);

impl EndWatch {
    fn set(&self, ended: Ended) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(ended);
        }
    }

    fn get(&self) -> Option<Ended> {
        self.0.lock().ok().and_then(|e| e.clone())
    }

    /// Why the connection ended, in words that tell an admin the cases apart.
    pub fn describe(&self) -> String {
        match self.get() {
            None => "closed by this device".into(),
            Some(Ended::Silent) => {
                "the gateway stopped answering (network lost, or the gateway hung)".into()
            }
            Some(Ended::ByGateway) => {
                "the gateway closed it (shutting down or restarting, or this device was revoked)"
                    .into()
            }
            Some(Ended::Error(text)) => {
                let has = |words: &[&str]| words.iter().any(|w| text.contains(w));
                if has(&["CertificateRevoked"]) {
                    "this device was revoked".into()
                } else if has(&["CertificateExpired"]) {
                    "this device's certificate expired".into()
                } else if has(&["timed out", "unreachable", "No route to host"]) {
                    format!("network lost ({text})")
                } else if has(&["reset", "broken pipe", "Broken pipe", "not connected"]) {
                    format!("the gateway closed it (shutting down or restarting): {text}")
                } else if has(&["close_notify", "unexpected-eof", "UnexpectedEof"]) {
                    "the gateway went away without closing (crashed or killed, or shutting down or restarting)".into()
                } else {
                    format!("connection error: {text}")
                }
            }
        }
    }

    fn error_text(&self) -> Option<String> {
        match self.get() {
            Some(Ended::Error(text)) => Some(text),
            _ => None,
        }
    }
}

impl Connection {
    /// How this connection ended (once `closed` has fired).
    pub fn end(&self) -> EndWatch {
        self.ended_with.clone()
    }
}

pub async fn connect(
    addr: &str,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
) -> Result<Connection, ClientError> {
    let unreachable = |reason: String| ClientError::Unreachable {
        addr: addr.to_owned(),
        reason,
    };
    let sock = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(unreachable(e.to_string())),
        Err(_) => return Err(unreachable("timed out".into())),
    };
    shimgate_wire::liveness::prepare(&sock);
    let gateway_ip = sock.peer_addr().ok().map(|a| a.ip());
    let connector = TlsConnector::from(tls);
    let tls_stream = match tokio::time::timeout(
        CONNECT_TIMEOUT,
        connector.connect(
            name,
            BufReader::with_capacity(h2tuning::TLS_READ_BUFFER, sock),
        ),
    )
    .await
    {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return Err(ClientError::classify(addr, &e)),
        Err(_) => return Err(unreachable("TLS handshake timed out".into())),
    };
    let channel = ConnSecret::export(tls_stream.get_ref().1)
        .zip(gateway_ip)
        .map(|(secret, gateway)| Arc::new(ChannelBase { secret, gateway }));
    let handshake = h2::client::Builder::new()
        .initial_window_size(h2tuning::STREAM_WINDOW)
        .initial_connection_window_size(h2tuning::CONNECTION_WINDOW)
        .max_frame_size(h2tuning::MAX_FRAME)
        .max_header_list_size(h2tuning::MAX_HEADER_LIST)
        .max_send_buffer_size(h2tuning::CHUNK * 4)
        .handshake::<_, Bytes>(tls_stream)
        .await;
    let (send, mut conn) = handshake.map_err(|e| ClientError::classify(addr, &e))?;
    let closed = CancellationToken::new();
    let ended_with = EndWatch::default();
    let mut pings = conn.ping_pong();
    let done = closed.clone();
    let watch = ended_with.clone();
    tokio::spawn(async move {
        let keepalive = async {
            let Some(pings) = pings.as_mut() else {
                return std::future::pending().await;
            };
            loop {
                tokio::time::sleep(PING_EVERY).await;
                match tokio::time::timeout(PING_TIMEOUT, pings.ping(h2::Ping::opaque())).await {
                    Ok(Ok(_)) => {}
                    _ => return,
                }
            }
        };
        tokio::select! {
            r = &mut conn => match r {
                Ok(()) => watch.set(Ended::ByGateway),
                Err(e) => {
                    tracing::debug!(error = %e, "gateway connection ended");
                    watch.set(Ended::Error(e.to_string()));
                }
            },
            _ = keepalive => watch.set(Ended::Silent),
            _ = done.cancelled() => {}
        }
        done.cancel();
    });
    Ok(Connection {
        send,
        closed,
        ended_with,
        channel,
    })
}

/// Connects with the device certificate and confirms the gateway accepts it.
pub async fn connect_device(
    addr: &str,
    name: ServerName<'static>,
    tls: Arc<ClientConfig>,
) -> Result<(Connection, WhoAmI), ClientError> {
    let conn = connect(addr, name, tls).await?;
    let whoami = tokio::time::timeout(
        CONNECT_TIMEOUT,
        call(&conn.send, Method::GET, WHOAMI_PATH, None),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ClientError::Protocol(
            "the gateway did not answer in time".into(),
        ))
    });
    match whoami {
        Ok(body) => {
            let me = serde_json::from_slice(&body)
                .map_err(|e| ClientError::Protocol(format!("bad whoami answer: {e}")))?;
            Ok((conn, me))
        }
        Err(ClientError::Protocol(text)) => {
            // The stream only knows the connection died; wait for the driver
            // to record why (a refused certificate arrives as a TLS alert).
            let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed.cancelled()).await;
            let reason = conn.ended_with.error_text().unwrap_or(text);
            Err(ClientError::classify(addr, &reason))
        }
        Err(e) => Err(e),
    }
}

/// One JSON request/response on the connection; non-2xx answers become
/// [`ClientError::Refused`] with the gateway's message.
pub async fn call(
    send: &SendRequest<Bytes>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<Vec<u8>, ClientError> {
    call_from(send, method, path, body, None).await
}

/// One echo the gateway sends to `host` for this device (`POST /v1/ping`,
/// where a policy rule allows ICMP): the gateway's answer.
pub async fn ping_through_gateway(
    send: &SendRequest<Bytes>,
    host: &str,
) -> Result<shimgate_wire::ping::Pinged, ClientError> {
    let body = serde_json::to_vec(&shimgate_wire::ping::PingRequest {
        host: host.to_owned(),
    })
    .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let answer = call(
        send,
        Method::POST,
        shimgate_wire::ping::PING_PATH,
        Some(body),
    )
    .await?;
    serde_json::from_slice(&answer)
        .map_err(|e| ClientError::Protocol(format!("the gateway's ping answer: {e}")))
}

/// [`call`] on behalf of a program on this device, whose [`Origin`] the
/// gateway's policy may ask about.
pub async fn call_from(
    send: &SendRequest<Bytes>,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
    origin: Option<&Origin>,
) -> Result<Vec<u8>, ClientError> {
    let protocol = |e: h2::Error| ClientError::Protocol(e.to_string());
    let mut req = Request::builder()
        .method(method)
        .uri(format!("https://gateway{path}"))
        .header(http::header::CONTENT_TYPE, "application/json");
    if let Some(origin) = origin {
        req = req.header(ORIGIN_HEADER, origin.encode());
    }
    let req = req
        .body(())
        .map_err(|e| ClientError::Protocol(e.to_string()))?;
    let mut send = send.clone().ready().await.map_err(protocol)?;
    let (response, mut stream) = send.send_request(req, body.is_none()).map_err(protocol)?;
    if let Some(body) = body {
        stream
            .send_data(Bytes::from(body), true)
            .map_err(protocol)?;
    }
    let response = response.await.map_err(protocol)?;
    let status = response.status();
    let out = shimgate_wire::body::read(&mut response.into_body(), MAX_BODY)
        .await
        .map_err(|e| ClientError::Protocol(format!("the gateway's answer: {e}")))?;
    if status.is_success() {
        return Ok(out);
    }
    let message = serde_json::from_slice::<ErrorBody>(&out)
        .map(|e| e.error)
        .unwrap_or_else(|_| String::from_utf8_lossy(&out).into_owned());
    Err(ClientError::Refused { status, message })
}

/// Why the gateway gave no stream for a request.
#[derive(Debug)]
pub enum StreamError {
    /// The gateway answered, and said no (or reset the stream).
    Refused(TunnelError),
    /// The connection broke under the request; another may work.
    Broken(h2::Error),
}

impl From<StreamError> for TunnelError {
    fn from(e: StreamError) -> TunnelError {
        match e {
            StreamError::Refused(e) => e,
            StreamError::Broken(_) => TunnelError::General,
        }
    }
}

/// Sends `req` (and `body`, if any, as the whole request body) and waits
/// for the answer: a tunnel, a peer grant, a relay. `200` gives the
/// response and our half of the stream; anything else is the refusal the
/// gateway named ([`ERROR_HEADER`], else its status).
pub async fn open_stream(
    send: SendRequest<Bytes>,
    req: Request<()>,
    body: Option<Bytes>,
) -> Result<(Response<RecvStream>, SendStream<Bytes>), StreamError> {
    let mut send = send.ready().await.map_err(StreamError::Broken)?;
    let (response, mut stream) = send.send_request(req, false).map_err(StreamError::Broken)?;
    if let Some(body) = body {
        stream.send_data(body, true).map_err(StreamError::Broken)?;
    }
    let response = response.await.map_err(|e| {
        if e.is_reset() {
            StreamError::Refused(TunnelError::General)
        } else {
            StreamError::Broken(e)
        }
    })?;
    let status = response.status();
    if status == StatusCode::OK {
        return Ok((response, stream));
    }
    let header = response
        .headers()
        .get(ERROR_HEADER)
        .and_then(|v| v.to_str().ok());
    Err(StreamError::Refused(TunnelError::from_response(
        status, header,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons an admin must tell apart come out as their own errors.
    /// How a connection ended, in the words the device logs.
    #[test]
    fn ends_are_described_apart() {
        let said = |ended: Option<Ended>| {
            let w = EndWatch::default();
            if let Some(e) = ended {
                w.set(e);
            }
            w.describe()
        };
        let error = |t: &str| said(Some(Ended::Error(t.into())));
        assert!(error("received fatal alert: CertificateRevoked").contains("revoked"));
        assert!(error("received fatal alert: CertificateExpired").contains("expired"));
        assert!(error("Connection timed out (os error 110)").starts_with("network lost"));
        assert!(said(Some(Ended::Silent)).contains("stopped answering"));
        assert!(said(Some(Ended::ByGateway)).contains("shutting down or restarting"));
        assert!(
            error("peer closed connection without sending TLS close_notify")
                .contains("without closing")
        );
        assert_eq!(said(None), "closed by this device");
    }

    #[test]
    fn alerts_are_classified() {
        let classify = |text: &str| ClientError::classify("gw:8443", &text);
        assert!(matches!(
            classify("received fatal alert: CertificateRevoked"),
            ClientError::Revoked
        ));
        assert!(matches!(
            classify("received fatal alert: CertificateExpired"),
            ClientError::Expired
        ));
        assert!(matches!(
            classify("received fatal alert: UnknownCA"),
            ClientError::Rejected(_)
        ));
        assert!(matches!(
            classify("Connection refused (os error 111)"),
            ClientError::Unreachable { .. }
        ));
    }
}
