//! Faults: the registry goes away under a running system.

use std::io::{ErrorKind, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::db::Database;
use crate::harness::socks::{connect_ok, http_get};
use crate::harness::*;

/// Reads from a flowing stream until `n` more bytes came, or panics.
fn keeps_flowing(s: &mut TcpStream, n: usize, what: &str) {
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 16 * 1024];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf) {
            Ok(0) => panic!("{what} ended"),
            Ok(k) => got += k,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("{what} broke: {e}"),
        }
        assert!(Instant::now() < deadline, "{what} stopped flowing");
    }
}

/// Postgres is stopped (`pg_ctl stop -m fast`: sessions cut, connections
/// refused) and started again a while later. Established tunnels and
/// peer links keep flowing, a known device reconnects and opens new tunnels
/// and peer sessions, enrollment answers "unavailable" instead of hanging;
/// when Postgres is back, the peer sessions brokered meanwhile are in the
/// audit log (buffered, not lost).
#[test]
fn a_registry_outage_stops_nothing_that_is_running_and_loses_no_audit() {
    // the server of the test's own runs as the `postgres` user
    if !crate::harness::netns::require_root(
        "faults::a_registry_outage_stops_nothing_that_is_running_and_loses_no_audit",
    ) {
        return;
    }
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 256,
            every: Duration::from_millis(10),
        },
    );
    let web = Origin::http(V4, &unique_body("outage page"));
    let mut gw = Gateway::init_on(Database::own_server(), GatewaySpec::localhost());
    gw.allow("127.0.0.1/32", &[]);
    for port in [stream.port(), web.port()] {
        gw.allow("bob.vpn.internal", &["--ports", &port.to_string()]);
    }
    gw.serve();
    let spare_code = gw.token("carol");
    let mut alice = Device::enrolled_up(&gw, "alice", "alice");
    let mut bob = Device::enrolled(&gw, "bob", "bob");
    for port in [stream.port(), web.port()] {
        bob.cli(&["export", &port.to_string()]).expect_ok();
    }
    bob.up();
    poll(
        "bob's page peer to peer",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let s = connect_ok(alice.socks, "bob.vpn.internal", web.port());
            http_get(s, "bob.vpn.internal")
                .contains("outage page")
                .then_some(())
        },
    );
    let mut tunnel = connect_ok(alice.socks, V4, stream.port());
    let mut link = connect_ok(alice.socks, "bob.vpn.internal", stream.port());
    keeps_flowing(&mut tunnel, 4096, "the tunnel");
    keeps_flowing(&mut link, 4096, "the peer link");

    let counts = |gw: &Gateway| {
        let a = gw.ok(&["audit", "--action", "peer.", "--limit", "500"]);
        let grants = a.lines().filter(|l| l.contains("peer.session ")).count();
        let ends = a.lines().filter(|l| l.contains("peer.session.end")).count();
        (grants, ends, a)
    };
    // the reports of sessions that ended before the outage, written
    poll(
        "the audit log to settle before the outage",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let (g, e, _) = counts(&gw);
            (e + 1 == g).then_some(())
        },
    );
    let (grants_before, ends_before, _) = counts(&gw);
    eprintln!("[e2e] before the outage: {grants_before} grants, {ends_before} ends");
    gw.db.server().stop();
    let outage = Instant::now();

    keeps_flowing(&mut tunnel, 16 * 1024, "the tunnel during the outage");
    keeps_flowing(&mut link, 16 * 1024, "the peer link during the outage");
    // a new tunnel, on the cached view
    let s = connect_ok(alice.socks, V4, web.port());
    assert!(http_get(s, "127.0.0.1").contains("outage page"));
    // alice restarts: her certificate is in the gateway's memory (the open
    // link goes with her first process, and so does its end-of-session report)
    alice.stop();
    drop(link);
    alice.up();
    // new peer sessions: brokered from memory, their audit entries buffered
    for _ in 0..2 {
        let s = connect_ok(alice.socks, "bob.vpn.internal", web.port());
        assert!(http_get(s, "bob.vpn.internal").contains("outage page"));
    }
    // enrollment needs the registry: a clear refusal, not a hang
    let carol = Device::new("carol");
    let t = Instant::now();
    let out = carol.enroll(&spare_code);
    assert!(!out.ok(), "enrollment succeeded without a registry: {out}");
    eprintln!(
        "[e2e] enrollment during the outage refused after {:?}: {}",
        t.elapsed(),
        out.stderr.trim()
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "enrollment took {:?} to fail",
        t.elapsed()
    );
    assert!(
        out.stderr.contains("registry is unavailable"),
        "enrollment during the outage should say the registry is unavailable: {out}"
    );
    eprintln!("[e2e] outage lasted {:?}", outage.elapsed());

    gw.db.server().start_again();
    // everything brokered during the outage reaches the audit log
    // during the outage: two sessions granted and ended
    let audit = poll(
        "the outage's peer sessions to reach the audit log",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let (g, e, a) = counts(&gw);
            (g >= grants_before + 2 && e >= ends_before + 2).then_some(a)
        },
    );
    eprintln!("[e2e] audit after the outage:\n{audit}");
    // and enrollment works again
    let carol = Device::new("carol");
    carol.enroll(&spare_code).expect_ok();
    assert!(gw.device_list().contains("carol"));
}

/// A tmpfs mounted for a test, unmounted on drop.
struct Mount(std::path::PathBuf);

impl Mount {
    fn tmpfs(at: &std::path::Path, options: &str) -> Mount {
        std::fs::create_dir_all(at).unwrap();
        let mut cmd = std::process::Command::new("mount");
        cmd.args(["-t", "tmpfs", "-o", options, "tmpfs"]).arg(at);
        run(&mut cmd, Duration::from_secs(10)).expect_ok();
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// Files left anywhere under `dir`.
fn files_under(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.push(p.display().to_string());
            }
        }
    }
    out
}

/// `init` on a disk that fills up half way, or on a read-only one, says why
/// and leaves no CA or key behind; `serve` on a read-only data dir says why.
#[test]
fn a_full_or_read_only_data_dir_fails_clearly_and_keeps_nothing() {
    if !crate::harness::netns::require_root(
        "faults::a_full_or_read_only_data_dir_fails_clearly_and_keeps_nothing",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let gateway = |data: &std::path::Path, args: &[&str]| {
        let mut cmd = std::process::Command::new(crate::harness::env::bin("shimgate-gateway"));
        crate::harness::proc::clean_env(&mut cmd, tmp.path());
        cmd.arg("--data-dir").arg(data).args(args);
        run(&mut cmd, Duration::from_secs(30))
    };
    let init = ["init", "--name", "localhost", "--listen", "127.0.0.1:0"];

    // room for two small files, not five
    let full = tmp.path().join("full");
    let _full = Mount::tmpfs(&full, "size=8k");
    let out = gateway(&full.join("gw"), &init);
    assert!(!out.ok(), "init succeeded on a full disk: {out}");
    let said = out.stderr.to_lowercase();
    assert!(
        said.contains("no space left"),
        "init did not say the disk is full: {out}"
    );
    assert!(
        files_under(&full).is_empty(),
        "a failed init left files behind: {:?}",
        files_under(&full)
    );

    let ro = tmp.path().join("ro");
    let _ro = Mount::tmpfs(&ro, "ro,size=1m");
    let out = gateway(&ro.join("gw"), &init);
    assert!(!out.ok(), "init succeeded on a read-only disk: {out}");
    assert!(
        out.stderr.to_lowercase().contains("read-only"),
        "init did not say the disk is read-only: {out}"
    );

    // a working data dir that becomes read-only: serve refuses, clearly
    let data = tmp.path().join("data");
    gateway(&data, &init).expect_ok();
    let mut bind = std::process::Command::new("mount");
    bind.arg("--bind").arg(&data).arg(&data);
    run(&mut bind, Duration::from_secs(10)).expect_ok();
    let _bound = Mount(data.clone());
    let mut ro_bind = std::process::Command::new("mount");
    ro_bind.args(["-o", "remount,ro,bind"]).arg(&data);
    run(&mut ro_bind, Duration::from_secs(10)).expect_ok();
    let out = gateway(&data, &["serve", "--console", "off"]);
    assert!(!out.ok(), "serve ran on a read-only data dir: {out}");
    assert!(
        out.stderr.to_lowercase().contains("read-only")
            || out.stderr.to_lowercase().contains("readonly"),
        "serve did not say the data dir is read-only: {out}"
    );
}

/// A direct peer link does not need the gateway once it runs: it keeps
/// flowing while the gateway is down, and new sessions work when it is
/// back. A peer that goes away ends the link at once for the client.
#[test]
fn peer_links_outlive_the_gateway_and_a_lost_peer_is_noticed() {
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 256,
            every: Duration::from_millis(10),
        },
    );
    let web = Origin::http(V4, &unique_body("peer page"));
    let mut gw = Gateway::init(Backend::Sqlite);
    for port in [stream.port(), web.port()] {
        gw.allow("bob.vpn.internal", &["--ports", &port.to_string()]);
    }
    gw.serve();
    let alice = Device::enrolled_up(&gw, "alice", "alice");
    let mut bob = Device::enrolled(&gw, "bob", "bob");
    for port in [stream.port(), web.port()] {
        bob.cli(&["export", &port.to_string()]).expect_ok();
    }
    bob.up();
    let page = || connect_ok(alice.socks, "bob.vpn.internal", web.port());
    poll(
        "bob's page peer to peer",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || http_get(page(), "bob").contains("peer page").then_some(()),
    );
    let mut link = connect_ok(alice.socks, "bob.vpn.internal", stream.port());
    keeps_flowing(&mut link, 4096, "the peer link");

    gw.stop();
    let down = Instant::now();
    keeps_flowing(&mut link, 64 * 1024, "the peer link with the gateway down");
    eprintln!(
        "[e2e] the peer link flowed for {:?} with the gateway down",
        down.elapsed()
    );
    gw.serve();
    let back = Instant::now();
    poll(
        "a new peer session after the gateway came back",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let (code, s) =
                crate::harness::socks::connect(alice.socks, "bob.vpn.internal", web.port()).ok()?;
            (code == 0 && http_get(s, "bob").contains("peer page")).then_some(())
        },
    );
    eprintln!(
        "[e2e] new peer sessions {:?} after the gateway came back",
        back.elapsed()
    );
    keeps_flowing(&mut link, 4096, "the peer link after the gateway came back");

    // bob goes away mid-stream: alice's client sees the end at once
    bob.stop();
    let gone = Instant::now();
    link.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match link.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        assert!(
            gone.elapsed() < Duration::from_secs(10),
            "alice's client still reads a link to a peer that is gone"
        );
    }
    eprintln!(
        "[e2e] the link ended {:?} after bob stopped",
        gone.elapsed()
    );
    // bob back: new sessions work
    bob.up();
    poll(
        "a peer session after bob came back",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let (code, s) =
                crate::harness::socks::connect(alice.socks, "bob.vpn.internal", web.port()).ok()?;
            (code == 0 && http_get(s, "bob").contains("peer page")).then_some(())
        },
    );
}

/// Drops every packet to and from a TCP port on this host (nftables, output
/// hook, which loopback traffic crosses both ways) while it lives: a
/// partition, where connections hang instead of being refused.
struct Partition {
    table: String,
}

impl Partition {
    fn port(port: u16) -> Partition {
        let table = format!("sg_partition_{}_{port}", std::process::id());
        // Made first, so that a failure below still deletes what was added.
        let partition = Partition { table };
        let t = &partition.table;
        for command in [
            format!("add table inet {t}"),
            format!("add chain inet {t} out {{ type filter hook output priority 0; }}"),
            format!("add rule inet {t} out tcp dport {port} drop"),
            format!("add rule inet {t} out tcp sport {port} drop"),
        ] {
            let mut cmd = std::process::Command::new("nft");
            cmd.arg(&command);
            crate::harness::proc::run(&mut cmd, Duration::from_secs(20)).expect_ok();
        }
        partition
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft")
            .args(["delete", "table", "inet", &self.table])
            .status();
    }
}

/// A gateway cut off from Postgres (packets dropped, not refused) keeps its open tunnels and
/// admits new ones for its registry lease (here 3 s), then refuses them (SOCKS 0x01, the
/// gateway says why) until Postgres is reachable again, when new tunnels work with no step.
#[test]
fn a_partitioned_gateway_holds_its_lease_then_refuses_new_tunnels() {
    if !crate::harness::netns::require_root("faults::a_partitioned_gateway_holds_its_lease") {
        return;
    }
    let db = Database::own_server();
    let pg_port = db
        .url
        .as_deref()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse::<u16>().ok())
        .expect("the port of the test's own Postgres");
    let mut gw = Gateway::init_on(db, GatewaySpec::localhost());
    gw.allow("127.0.0.1/32", &[]);
    gw.serve_args(&["--console", "off", "--registry-lease", "3s"]);
    let dev = Device::enrolled_up(&gw, "alice", "laptop");
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 1024,
            every: Duration::from_millis(5),
        },
    );
    let mut live = crate::revoke::flowing(&dev, stream.port());
    let code = gw.token("bob");

    let cut = Partition::port(pg_port);
    let since = Instant::now();
    let mut early = connect_ok(dev.socks, V4, stream.port());
    keeps_flowing(&mut early, 1024, "a tunnel opened inside the lease");
    let refused = poll(
        "new tunnels to be refused once the lease ran out",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || match crate::harness::socks::connect(dev.socks, V4, stream.port()) {
            Ok((code, _)) if code != crate::harness::socks::SUCCEEDED => Some(code),
            _ => None,
        },
    );
    let after = since.elapsed();
    eprintln!("[e2e] new tunnels refused {after:?} after the partition began");
    assert_eq!(refused, crate::harness::socks::GENERAL_FAILURE);
    // The lease counts from the last beat the registry took, up to a second
    // before the partition.
    assert!(
        after >= Duration::from_millis(1_500),
        "refused after {after:?}, before a 3 s lease could have run out"
    );
    keeps_flowing(&mut live, 4096, "the tunnel opened before the partition");
    keeps_flowing(&mut early, 4096, "the tunnel opened inside the lease");
    let t = Instant::now();
    let out = Device::new("late").enroll(&code);
    eprintln!(
        "[e2e] enrollment during the partition: {:?}: {out}",
        t.elapsed()
    );
    assert!(!out.ok(), "{out}");
    assert!(out.stderr.contains("registry is unavailable"), "{out}");
    assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
    poll(
        "the gateway to say why",
        Duration::from_secs(10),
        Duration::from_millis(100),
        || gw.logs().contains("longer than the lease").then_some(()),
    );

    drop(cut);
    let back = Instant::now();
    poll(
        "new tunnels to work again once Postgres is reachable",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            crate::harness::socks::connect(dev.socks, V4, stream.port())
                .ok()
                .filter(|(code, _)| *code == crate::harness::socks::SUCCEEDED)
        },
    );
    eprintln!(
        "[e2e] new tunnels admitted {:?} after the partition healed",
        back.elapsed()
    );
    keeps_flowing(&mut live, 4096, "the tunnel opened before the partition");
}
