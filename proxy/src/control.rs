//! The device's control stream to the gateway: announces where this
//! device's peer listener is and what it exports, accepts the sessions the
//! gateway offers, opens relay streams when asked, cuts links with revoked
//! peers, fetches the routes again when policy changes, and carries session
//! reports for the audit log. Reconnects with
//! backoff when the stream or its connection ends.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use shimgate_wire::control::{self, CONTROL_PATH, Decoder, DeviceMsg, Exports, GatewayMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::ClientError;
use crate::config::{ConfigDir, DeviceConfig};
use crate::listener::PeerListener;
use crate::pac::Pac;
use crate::peer::Peers;
use crate::pool::Pool;

const BACKOFF_START: Duration = Duration::from_millis(100);
/// Short: while this stream is down the device is offline for peers.
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How often config.toml is checked for changed exports.
const EXPORTS_POLL: Duration = Duration::from_secs(1);

/// Keeps the control stream up until `stop`.
pub async fn keep(
    peers: Arc<Peers>,
    pool: Arc<Pool>,
    pac: Arc<Pac>,
    dir: ConfigDir,
    listener: Arc<PeerListener>,
    mut reports: mpsc::Receiver<DeviceMsg>,
    stop: CancellationToken,
) {
    let mut backoff = BACKOFF_START;
    let mut exports = ExportsWatch::new(dir);
    loop {
        let started = tokio::time::Instant::now();
        let ended = tokio::select! {
            r = session(&peers, &pool, &pac, &listener, &mut reports, &mut exports) => r,
            _ = stop.cancelled() => return,
        };
        match ended {
            Err(ControlEnd::Revoked) => {
                tracing::warn!("this device was revoked: cutting every peer link");
                peers.cut(None);
            }
            Err(ControlEnd::Failed(why)) => {
                tracing::info!(reason = %why, "control stream to the gateway ended; reconnecting");
            }
            Ok(()) => {}
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = BACKOFF_START;
        }
        tokio::select! {
            _ = tokio::time::sleep(crate::pool::jitter(backoff)) => {}
            _ = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

enum ControlEnd {
    Revoked,
    Failed(String),
}

/// One control stream, from opening to its end.
async fn session(
    peers: &Arc<Peers>,
    pool: &Arc<Pool>,
    pac: &Pac,
    listener: &PeerListener,
    reports: &mut mpsc::Receiver<DeviceMsg>,
    exports: &mut ExportsWatch,
) -> Result<(), ControlEnd> {
    // The relays this stream asks for run on this slot's worker, next to
    // the connection that carries them.
    let slot = pool.pick();
    let send = pool.slot_connection(slot).await.map_err(|e| match e {
        ClientError::Revoked => ControlEnd::Revoked,
        other => ControlEnd::Failed(other.to_string()),
    })?;
    let failed = |e: &dyn std::fmt::Display| ControlEnd::Failed(e.to_string());
    let req = Request::builder()
        .method(Method::POST)
        .uri(CONTROL_PATH)
        .body(())
        .map_err(|e| failed(&e))?;
    let mut ready = send.clone().ready().await.map_err(|e| failed(&e))?;
    let (response, mut stream) = ready.send_request(req, false).map_err(|e| failed(&e))?;
    let announce = |peers: &Peers| {
        let (listen_port, addrs) = listener.endpoints();
        let exports = peers.exports();
        DeviceMsg::Announce {
            listen_port,
            addrs,
            exports: exports.tcp,
            udp_exports: exports.udp,
        }
    };
    let write = |stream: &mut h2::SendStream<Bytes>, msg: &DeviceMsg| {
        let wire = control::encode(msg).map_err(|e| failed(&e))?;
        stream
            .send_data(Bytes::from_owner(wire), false)
            .map_err(|e| failed(&e))
    };
    write(&mut stream, &announce(peers))?;
    let response = response.await.map_err(|e| failed(&e))?;
    if response.status() != StatusCode::OK {
        return Err(ControlEnd::Failed(format!(
            "the gateway answered {} to the control stream",
            response.status()
        )));
    }
    tracing::info!(exports = %peers.exports(), listen_port = listener.endpoints().0, "control stream up: online for peer sessions");
    let mut body = response.into_body();
    let mut decoder = Decoder::default();
    loop {
        tokio::select! {
            data = body.data() => {
                let chunk = match data {
                    Some(Ok(c)) => c,
                    Some(Err(e)) => return Err(failed(&e)),
                    None => return Err(ControlEnd::Failed("the gateway closed the control stream".into())),
                };
                let _ = body.flow_control().release_capacity(chunk.len());
                decoder.push(&chunk).map_err(|e| failed(&e))?;
                while let Some(msg) = decoder.message::<GatewayMsg>().map_err(|e| failed(&e))? {
                    if let Some(answer) = on_message(peers, pool, pac, slot, &send, msg) {
                        write(&mut stream, &answer)?;
                    }
                }
            }
            report = reports.recv() => {
                if let Some(report) = report {
                    write(&mut stream, &report)?;
                }
            }
            changed = exports.changed() => {
                if peers.set_exports(changed) {
                    tracing::info!(exports = %peers.exports(), "exports changed");
                    if let Err(e) = listener.follow_exports() {
                        tracing::error!(error = %e, "cannot open the peer listener: peers reach this device through the gateway's relay only");
                    }
                    write(&mut stream, &announce(peers))?;
                }
            }
        }
    }
}

/// Handles one message from the gateway; returns the answer to send, if any.
fn on_message(
    peers: &Arc<Peers>,
    pool: &Pool,
    pac: &Pac,
    slot: usize,
    send: &h2::client::SendRequest<Bytes>,
    msg: GatewayMsg,
) -> Option<DeviceMsg> {
    match msg {
        GatewayMsg::Offer {
            session,
            key,
            from,
            from_user,
            port,
            proto,
            expires_in_ms,
        } => {
            tracing::info!(%from, user = %from_user, port, %proto, %session, "peer session offered");
            Some(
                match peers.offered(session, key, from, (port, proto), expires_in_ms) {
                    Ok(()) => DeviceMsg::Accept { session },
                    Err(e) => DeviceMsg::Decline {
                        session,
                        reason: e.as_str().to_owned(),
                    },
                },
            )
        }
        GatewayMsg::Relay { session } => {
            pool.spawn_on(slot, Arc::clone(peers).answer_relay(send.clone(), session));
            None
        }
        GatewayMsg::PeerGone { device } => {
            peers.cut(Some(&device));
            None
        }
        GatewayMsg::RoutesChanged => {
            pac.refresh_now();
            None
        }
        GatewayMsg::Unknown => {
            tracing::debug!("a control message of a later release ignored");
            None
        }
    }
}

/// Notices `shimgate export` changing config.toml under a running `up`.
struct ExportsWatch {
    dir: ConfigDir,
    seen: Option<SystemTime>,
    /// An interval, not a sleep: `changed()` is raced in a `select!` that
    /// drops it whenever another branch wins, and a fresh sleep each time
    /// would never fire on a busy stream.
    tick: tokio::time::Interval,
}

impl ExportsWatch {
    fn new(dir: ConfigDir) -> ExportsWatch {
        let seen = modified(&dir);
        let mut tick = tokio::time::interval(EXPORTS_POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ExportsWatch { dir, seen, tick }
    }

    /// Resolves with the exports once config.toml has changed (cancel-safe).
    async fn changed(&mut self) -> Exports {
        loop {
            self.tick.tick().await;
            let now = modified(&self.dir);
            if now != self.seen {
                self.seen = now;
                match DeviceConfig::load(&self.dir) {
                    Ok(c) => return c.export_ports(),
                    Err(e) => tracing::warn!(error = %e, "cannot re-read exports"),
                }
            }
        }
    }
}

fn modified(dir: &ConfigDir) -> Option<SystemTime> {
    std::fs::metadata(dir.config())
        .and_then(|m| m.modified())
        .ok()
}
