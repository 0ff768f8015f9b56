//! The gateways serving on this registry: each says it is alive once a second (its heartbeat,
//! with its address, region, version and how many devices it holds), and `gateway list` reads
//! them back. Every time here is the database's own clock, so gateways on hosts whose clocks
//! differ still agree on how old a heartbeat is.

use sqlx::Row;

use crate::{Backend, Registry, Result};

/// What a gateway says about itself in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heartbeat {
    /// The gateway's name (the first `init --name`): one row per name.
    pub name: String,
    /// Where devices reach it (`host:port`).
    pub address: String,
    /// A label an operator gives it (`serve --region`), or empty.
    pub region: String,
    pub version: String,
    /// Devices with a connection open to it now.
    pub devices_online: i64,
}

/// A gateway as the registry last heard from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRow {
    pub heartbeat: Heartbeat,
    /// When this run of the gateway started (unix seconds, the database's clock).
    pub started_at: i64,
    /// When it last said it was alive.
    pub heartbeat_at: i64,
    /// Seconds since then, by the database's clock now.
    pub silent_for: i64,
}

/// A query over `gateways` for each backend, `$now` in it standing for the database's clock in
/// unix seconds (written out at compile time: the SQL stays static).
macro_rules! per_backend {
    ($($part:tt),+ $(,)?) => {
        (
            concat!($(per_backend!(@pg $part)),+),
            concat!($(per_backend!(@sqlite $part)),+),
        )
    };
    (@pg now) => { "CAST(FLOOR(EXTRACT(EPOCH FROM clock_timestamp())) AS BIGINT)" };
    (@sqlite now) => { "CAST(strftime('%s', 'now') AS INTEGER)" };
    (@pg $text:literal) => { $text };
    (@sqlite $text:literal) => { $text };
}

/// Records a heartbeat; `$6` is 1 for a gateway's first one (its start time is reset).
const HEARTBEAT: (&str, &str) = per_backend!(
    "INSERT INTO gateways \
     (name, address, region, version, devices_online, started_at, heartbeat_at) \
     VALUES ($1, $2, $3, $4, $5, ",
    now,
    ", ",
    now,
    ") ON CONFLICT (name) DO UPDATE SET address = excluded.address, \
     region = excluded.region, version = excluded.version, \
     devices_online = excluded.devices_online, \
     started_at = CASE WHEN $6 = 1 THEN excluded.started_at ELSE gateways.started_at END, \
     heartbeat_at = excluded.heartbeat_at",
);

const LIST: (&str, &str) = per_backend!(
    "SELECT name, address, region, version, devices_online, started_at, heartbeat_at, ",
    now,
    " - heartbeat_at AS silent_for FROM gateways ORDER BY name",
);

impl Registry {
    fn for_backend(&self, (pg, sqlite): (&'static str, &'static str)) -> &'static str {
        match self.backend {
            Backend::Postgres => pg,
            Backend::Sqlite => sqlite,
        }
    }

    /// Records `beat`. `starting`: the first heartbeat of this run of the gateway (its start
    /// time is reset; later heartbeats keep it).
    pub async fn gateway_heartbeat(&self, beat: &Heartbeat, starting: bool) -> Result<()> {
        sqlx::query(self.for_backend(HEARTBEAT))
            .bind(&beat.name)
            .bind(&beat.address)
            .bind(&beat.region)
            .bind(&beat.version)
            .bind(beat.devices_online)
            .bind(i64::from(starting))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Every gateway that has ever beaten on this registry, by name.
    pub async fn gateways(&self) -> Result<Vec<GatewayRow>> {
        let rows = sqlx::query(self.for_backend(LIST))
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|row| {
                Ok(GatewayRow {
                    heartbeat: Heartbeat {
                        name: row.try_get("name")?,
                        address: row.try_get("address")?,
                        region: row.try_get("region")?,
                        version: row.try_get("version")?,
                        devices_online: row.try_get("devices_online")?,
                    },
                    started_at: row.try_get("started_at")?,
                    heartbeat_at: row.try_get("heartbeat_at")?,
                    silent_for: row.try_get("silent_for")?,
                })
            })
            .collect()
    }

    /// Forgets gateway `name` (one taken out of service); `false` if there was none.
    pub async fn forget_gateway(&self, name: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM gateways WHERE name = $1")
            .bind(name)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(name: &str, devices: i64) -> Heartbeat {
        Heartbeat {
            name: name.into(),
            address: format!("{name}.example:8443"),
            region: "eu".into(),
            version: "1.2.3".into(),
            devices_online: devices,
        }
    }

    #[tokio::test]
    async fn heartbeats_are_kept_one_row_per_gateway() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let registry = Registry::connect(&dir.path().join("r.db").display().to_string())
            .await
            .expect("open the registry");
        registry.migrate().await.expect("migrate");
        assert!(registry.gateways().await.expect("list").is_empty());
        registry
            .gateway_heartbeat(&beat("gw-a", 0), true)
            .await
            .expect("first beat");
        registry
            .gateway_heartbeat(&beat("gw-b", 2), true)
            .await
            .expect("another gateway");
        registry
            .gateway_heartbeat(&beat("gw-a", 5), false)
            .await
            .expect("a later beat");
        let all = registry.gateways().await.expect("list");
        let names: Vec<_> = all.iter().map(|g| g.heartbeat.name.as_str()).collect();
        assert_eq!(names, ["gw-a", "gw-b"]);
        assert_eq!(all[0].heartbeat, beat("gw-a", 5), "the latest beat wins");
        assert!(all[0].heartbeat_at >= all[0].started_at);
        assert!((0..5).contains(&all[0].silent_for), "{:?}", all[0]);
        assert!(registry.forget_gateway("gw-a").await.expect("forget"));
        assert!(!registry.forget_gateway("gw-a").await.expect("forget again"));
        assert_eq!(registry.gateways().await.expect("list").len(), 1);
    }
}
