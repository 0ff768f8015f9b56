//! `docker-compose.yml`, for real, without a Docker engine (needs root):
//! `docker-compose config` validates the file and resolves each service's
//! command, environment, volumes and networks; then every service runs as a
//! process in its own network namespace, the file's networks become bridges,
//! and the service names go into each namespace's `/etc/hosts`. The scripts
//! and env files are the ones the containers run (`deploy/`). The one image
//! we don't build, Postgres, is replaced by Debian's Postgres.
//!
//! Then, as the README's Docker section says: alice reaches the intranet
//! through the gateway and bob's exported page peer to peer.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::db::PgServer;
use crate::harness::env::bin;
use crate::harness::netns::{self, Netns, bridge};
use crate::harness::proc::{Proc, run};
use crate::harness::*;

/// One service as `docker-compose config` resolves it.
#[derive(Default, Debug)]
struct Service {
    image: String,
    command: Vec<String>,
    environment: Vec<(String, String)>,
    /// `volume:/mount[:mode]`.
    volumes: Vec<String>,
    networks: Vec<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate is in the workspace")
        .to_path_buf()
}

fn unquote(v: &str) -> String {
    let v = v.trim();
    v.strip_prefix('\'')
        .and_then(|v| v.strip_suffix('\''))
        .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
        .unwrap_or(v)
        .to_owned()
}

/// Reads the normalised YAML `docker-compose config` prints (two-space
/// indents, sequences at their key's indent): just the parts used here.
fn parse_config(yaml: &str) -> BTreeMap<String, Service> {
    let mut services = BTreeMap::new();
    let (mut top, mut service, mut key) = (String::new(), None::<String>, String::new());
    for line in yaml.lines() {
        let indent = line.len() - line.trim_start().len();
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        match indent {
            0 => {
                top = text.trim_end_matches(':').to_owned();
                service = None;
            }
            2 if top == "services" => {
                let name = text.trim_end_matches(':').to_owned();
                services.insert(name.clone(), Service::default());
                service = Some(name);
            }
            4 => {
                let Some(s) = service.as_ref().and_then(|n| services.get_mut(n)) else {
                    continue;
                };
                if let Some(item) = text.strip_prefix("- ") {
                    match key.as_str() {
                        "command" => s.command.push(unquote(item)),
                        "volumes" => s.volumes.push(unquote(item)),
                        _ => {}
                    }
                    continue;
                }
                let (k, v) = text.split_once(':').unwrap_or((text, ""));
                key = k.to_owned();
                if k == "image" {
                    s.image = unquote(v);
                }
            }
            6 => {
                let Some(s) = service.as_ref().and_then(|n| services.get_mut(n)) else {
                    continue;
                };
                let (k, v) = text.split_once(':').unwrap_or((text, ""));
                match key.as_str() {
                    "environment" => s.environment.push((k.to_owned(), unquote(v))),
                    "networks" => s.networks.push(k.to_owned()),
                    _ => {}
                }
            }
            _ => {}
        }
    }
    services
}

/// `docker-compose config` on the repository's file: valid, and resolved.
fn compose_config() -> BTreeMap<String, Service> {
    let root = repo_root();
    let mut cmd = Command::new("docker-compose");
    cmd.arg("-f")
        .arg(root.join("docker-compose.yml"))
        .arg("config");
    let out = run(&mut cmd, Duration::from_secs(60)).expect_ok();
    parse_config(&out.stdout)
}

/// Where an absolute path of a service lands in the test: under its named
/// volume's directory if a volume is mounted there (so services share it as
/// in Docker), else under the service's own directory.
fn host_path(tmp: &Path, service: &str, s: &Service, path: &str) -> PathBuf {
    for v in &s.volumes {
        let mut parts = v.split(':');
        let (Some(volume), Some(mount)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some(rest) = path.strip_prefix(mount) {
            return tmp
                .join("volumes")
                .join(volume)
                .join(rest.trim_start_matches('/'));
        }
    }
    tmp.join("services")
        .join(service)
        .join(path.trim_start_matches('/'))
}

#[test]
fn docker_compose_topology_runs_for_real() {
    if !netns::require_root("compose::docker_compose_topology_runs_for_real") {
        return;
    }
    let services = compose_config();
    for name in ["postgres", "gateway", "intranet", "alice", "bob"] {
        assert!(
            services.contains_key(name),
            "docker-compose.yml has no {name} service"
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("sg-e2e-compose-")
        .tempdir()
        .unwrap();
    let tmp = tmp.path();
    std::fs::set_permissions(tmp, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();

    // One namespace per service; one bridge per network, documentation
    // ranges in the order the file names the networks.
    let names: Vec<&String> = services.keys().collect();
    let nss: BTreeMap<&String, Netns> = names
        .iter()
        .map(|n| (*n, Netns::new(&format!("sg-c{}-", &n[..n.len().min(3)]))))
        .collect();
    let mut networks: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
    for (name, s) in &services {
        for net in &s.networks {
            networks.entry(net.as_str()).or_default().push(name);
        }
    }
    let ranges = [[198, 51, 100], [203, 0, 113], [192, 0, 2]];
    assert!(
        networks.len() <= ranges.len(),
        "more networks than this test has address ranges"
    );
    let mut addrs: BTreeMap<(&str, &String), Ipv4Addr> = BTreeMap::new();
    let mut switches = Vec::new();
    for (i, (net, members)) in networks.iter().enumerate() {
        let [a, b, c] = ranges[i];
        let mut ends = Vec::new();
        for (j, m) in members.iter().enumerate() {
            let addr = Ipv4Addr::new(a, b, c, 10 + j as u8);
            addrs.insert((net, m), addr);
            ends.push((&nss[*m], format!("{addr}/24")));
        }
        let ends: Vec<(&Netns, &str)> = ends.iter().map(|(n, a)| (*n, a.as_str())).collect();
        switches.push(bridge(&ends));
    }
    // Each service resolves the others it shares a network with, by name.
    for (name, s) in &services {
        let mut hosts = Vec::new();
        for net in &s.networks {
            for ((n, other), addr) in &addrs {
                if n == net && *other != name {
                    hosts.push((addr.to_string(), (*other).clone()));
                }
            }
        }
        nss[name].hosts(&hosts);
    }
    let addr_of = |service: &str| -> Ipv4Addr {
        *addrs
            .iter()
            .find(|((_, s), _)| s.as_str() == service)
            .map(|(_, a)| a)
            .expect("service has an address")
    };

    // postgres first (its own Postgres), then the rest in dependency order.
    // the `postgres` service, trusting every address (the namespaces only)
    let _pg = PgServer::start(
        Some(&nss[&"postgres".to_owned()].name),
        tmp.join("postgres"),
        "*",
        5432,
    );
    let bin_dir = bin("shimgate").parent().unwrap().to_path_buf();
    let mut procs = Vec::new();
    let spawn = |name: &str| -> Proc {
        let s = &services[name];
        assert_eq!(s.image, "shimgate:dev", "{name} runs our image");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &nss[&name.to_owned()].name, "env", "-i"]);
        cmd.arg(format!(
            "PATH={}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            bin_dir.display()
        ));
        cmd.arg(format!("HOME={}", tmp.display()));
        for (k, v) in &s.environment {
            let v = if v.starts_with('/') {
                host_path(tmp, name, s, v).display().to_string()
            } else {
                v.clone()
            };
            cmd.arg(format!("{k}={v}"));
        }
        for part in &s.command {
            match part.strip_prefix("/deploy/") {
                Some(script) => cmd.arg(repo_root().join("deploy").join(script)),
                None => cmd.arg(part),
            };
        }
        Proc::spawn(name, &mut cmd, tmp)
    };
    procs.push(spawn("intranet"));
    procs.push(spawn("gateway"));
    let gw_ns = nss[&"gateway".to_owned()].name.clone();
    poll(
        "the gateway to serve",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            let vpn_addr = SocketAddr::new(IpAddr::V4(addr_of("gateway")), 8443);
            netns::can_connect(Some(&gw_ns), vpn_addr).then_some(())
        },
    );
    // the console, with the first admin's one-time password in the gateway's log
    let console = format!("http://{}:8080/login", addr_of("gateway"));
    let login = curl_args(Some(&gw_ns), &[console.as_str()]);
    assert!(
        login.ok() && login.stdout.contains("Sign in"),
        "the console at {console}: {login}"
    );
    let gateway_log = std::fs::read_to_string(&procs[1].stdout).unwrap_or_default();
    assert!(
        gateway_log.contains("one-time password"),
        "the gateway's log shows no admin password:\n{gateway_log}"
    );
    procs.push(spawn("alice"));
    procs.push(spawn("bob"));

    let home = |device: &str| {
        let s = &services[device];
        let (_, dir) = s
            .environment
            .iter()
            .find(|(k, _)| k == "SHIMGATE_HOME")
            .expect("SHIMGATE_HOME");
        host_path(tmp, device, s, dir)
    };
    let device_cli = |device: &str, args: &[&str]| {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &nss[&device.to_owned()].name])
            .arg(bin("shimgate"))
            .arg("--config-dir")
            .arg(home(device))
            .args(args);
        run(&mut cmd, Duration::from_secs(30))
    };
    for device in ["alice", "bob"] {
        poll(
            &format!("{device} to enroll and connect"),
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                for p in procs.iter_mut() {
                    p.assert_running("the compose topology");
                }
                (device_cli(device, &["status"]).code() == Some(0)).then_some(())
            },
        );
    }

    // The README's two curls, from alice's container.
    let alice_ns = nss[&"alice".to_owned()].name.clone();
    let socks = SocketAddr::from(([127, 0, 0, 1], 1080));
    let page = curl(
        Some(&alice_ns),
        Some("--socks5-hostname"),
        Some(socks),
        "http://intranet/",
    );
    assert!(
        page.ok() && page.stdout.contains("Welcome to the intranet"),
        "alice -> intranet: {page}"
    );
    let direct = curl_args(
        Some(&alice_ns),
        &[
            "--max-time",
            "3",
            &format!("http://{}/", addr_of("intranet")),
        ],
    );
    assert!(!direct.ok(), "alice reached the intranet without the VPN");
    let peer = poll(
        "bob's exported page, peer to peer",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let out = curl(
                Some(&alice_ns),
                Some("--socks5-hostname"),
                Some(socks),
                "http://bob.vpn.internal:8000/",
            );
            out.ok().then_some(out)
        },
    );
    assert!(peer.stdout.contains("Hello from bob"), "{peer}");
    // `up` rewrites peers.json once a second
    poll(
        "`shimgate peers` on alice to list bob",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let v = device_cli("alice", &["peers", "--json"]).stdout;
            v.contains("\"peer\":\"bob\"").then_some(())
        },
    );
}
