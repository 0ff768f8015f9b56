//! Live sessions: tunnels open through the gateway now, and the peer
//! sessions it brokered recently (direct or relayed, bytes as reported).

use std::sync::Arc;

use askama::Template;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use shimgate_host::clock;

use super::auth::Nav;
use super::{Console, render};
use crate::activity::{PeerView, TunnelView};

/// What `/sessions` and `GET /api/v1/sessions` show.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SessionsView {
    pub tunnels: Vec<TunnelView>,
    pub peers: Vec<PeerView>,
    /// Devices holding a control stream (online for peer sessions).
    pub peer_online: usize,
}

impl Console {
    pub(crate) fn sessions_view(&self) -> SessionsView {
        SessionsView {
            tunnels: self.gw.tunnels.list(),
            peers: self.gw.broker.log.list(),
            peer_online: self.gw.broker.online(),
        }
    }
}

struct PeerLine {
    p: PeerView,
    granted: String,
    path: &'static str,
    state: &'static str,
}

#[derive(Template)]
#[template(path = "sessions.html")]
struct SessionsPage {
    title: &'static str,
    nav: Option<Nav>,
    tunnels: Vec<(TunnelView, String)>,
    peers: Vec<PeerLine>,
    peer_online: usize,
}

pub async fn page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let nav = match c.page_session(&headers).await {
        Ok(n) => n,
        Err(r) => return r,
    };
    let view = c.sessions_view();
    render(&SessionsPage {
        title: "Sessions",
        nav: Some(nav),
        tunnels: view
            .tunnels
            .into_iter()
            .map(|t| {
                let since = clock::show(t.since);
                (t, since)
            })
            .collect(),
        peers: view
            .peers
            .into_iter()
            .map(|p| PeerLine {
                granted: clock::show(p.granted_at),
                path: match p.path {
                    Some(shimgate_wire::control::PeerPath::Direct) => "direct",
                    Some(shimgate_wire::control::PeerPath::Relayed) => "relayed",
                    None => "—",
                },
                state: match p.state {
                    crate::activity::PeerState::Granted => "granted",
                    crate::activity::PeerState::Relaying => "relaying",
                    crate::activity::PeerState::Ended => "ended",
                },
                p,
            })
            .collect(),
        peer_online: view.peer_online,
    })
}
