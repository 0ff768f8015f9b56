//! Prometheus metrics (`/metrics`) and health checks (`/healthz`: the process answers;
//! `/readyz`: the registry answers a trivial query).
//!
//! The gateway counts connections, streams, bytes, handshake failures by reason and
//! enrollments where they happen (`metrics::counter!` in `server.rs` and `enroll.rs`); the
//! recorder that keeps them is installed when the console starts.

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use super::Console;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Longest `/readyz` waits for the registry.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// Installs the process-wide Prometheus recorder (once; later calls do nothing).
pub fn install() {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!("a metrics recorder was already installed; /metrics will be empty");
        }
        handle
    });
}

/// Runs a registry call and records how long it took.
pub async fn timed<T>(fut: impl Future<Output = T>) -> T {
    let t = Instant::now();
    let out = fut.await;
    ::metrics::histogram!("shimgate_registry_reload_seconds").record(t.elapsed().as_secs_f64());
    out
}

pub async fn render(State(c): State<Arc<Console>>) -> Response {
    let Some(handle) = HANDLE.get() else {
        return (StatusCode::SERVICE_UNAVAILABLE, "metrics are not enabled").into_response();
    };
    ::metrics::gauge!("shimgate_device_connections").set(c.gw.cache.live_connections() as f64);
    handle.run_upkeep();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        handle.render(),
    )
        .into_response()
}

pub async fn healthz() -> &'static str {
    "ok\n"
}

pub async fn readyz(State(c): State<Arc<Console>>) -> Response {
    let t = Instant::now();
    let ping = tokio::time::timeout(READY_TIMEOUT, c.gw.registry.ping()).await;
    ::metrics::histogram!("shimgate_registry_ping_seconds").record(t.elapsed().as_secs_f64());
    match ping {
        Ok(Ok(())) => (StatusCode::OK, "ready\n").into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "not ready: the registry does not answer");
            (StatusCode::SERVICE_UNAVAILABLE, "registry unavailable\n").into_response()
        }
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "registry timed out\n").into_response(),
    }
}
