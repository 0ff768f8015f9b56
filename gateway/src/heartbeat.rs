//! The gateway's heartbeat: once a second it tells the registry it is alive (its name, address,
//! region, version and how many devices hold a connection to it), so that `gateway list` on any
//! host sharing the registry shows every gateway, and one that stopped beating as down.

use std::sync::Arc;
use std::time::Duration;

use shimgate_registry::Heartbeat;
use tokio_util::sync::CancellationToken;

use crate::setup::Gateway;

/// How often a gateway beats.
pub const EVERY: Duration = Duration::from_secs(1);

/// The longest one beat may take.
const BEAT_LIMIT: Duration = Duration::from_secs(3);

/// Seconds without a heartbeat after which a gateway is shown down: a few missed beats, not
/// one slow write.
pub const DOWN_AFTER_SECS: i64 = 3;

/// Beats until `stop`, renewing the registry lease with every beat the registry takes. A failed
/// write is logged once until one succeeds again (the registry may be away; the gateway goes on
/// serving), and so is the lease running out.
pub async fn run(gw: Arc<Gateway>, stop: CancellationToken) {
    let mut starting = true;
    let mut failing = false;
    let mut lapsed = false;
    let mut tick = tokio::time::interval(EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        if !lapsed && !gw.lease.held() {
            tracing::error!(
                lease_secs = gw.lease.length().as_secs(),
                "the registry has not answered for longer than the lease: refusing new tunnels, UDP associations and peer sessions until it does (open ones go on)"
            );
            lapsed = true;
        }
        let beat = gw.heartbeat();
        // A registry behind a partition can hold a write for minutes: the next beat must come.
        let wrote =
            match tokio::time::timeout(BEAT_LIMIT, gw.registry.gateway_heartbeat(&beat, starting))
                .await
            {
                Ok(w) => w.map_err(|e| e.to_string()),
                Err(_) => Err(format!("no answer within {} s", BEAT_LIMIT.as_secs())),
            };
        match wrote {
            Ok(()) => {
                gw.lease.renew();
                if failing {
                    tracing::info!("heartbeat recorded again");
                }
                if lapsed {
                    tracing::info!("the registry answers again: admitting new flows");
                    lapsed = false;
                }
                starting = false;
                failing = false;
            }
            Err(e) if !failing => {
                tracing::warn!(error = %e, "cannot record the heartbeat: other hosts will show this gateway down");
                failing = true;
            }
            Err(_) => {}
        }
    }
}

impl Gateway {
    /// What this gateway says about itself now.
    fn heartbeat(&self) -> Heartbeat {
        Heartbeat {
            name: self.config.name().to_owned(),
            address: self.config.public_addr.clone(),
            region: self.region.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            devices_online: i64::try_from(self.device_connections.keys()).unwrap_or(i64::MAX),
        }
    }
}
