//! `shimgate-gateway demo`: the whole system on this machine, in one
//! process, with nothing installed: a gateway on an SQLite registry, a small
//! intranet web app that only the gateway can resolve (`intranet.internal`),
//! one enrolled device and its SOCKS5 proxy on 127.0.0.1:1080, and a second
//! device, bob, that exports a small web service on port 8000 to the VPN
//! (reached peer to peer as `bob.vpn.internal:8000`).
//!
//! Every part is the real one (real TLS, real enrollment over the network,
//! real HTTP/2 tunnels); only the processes are merged into one, and the
//! state lives in a temporary directory removed on exit.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use shimgate_host::clock;
use shimgate_proxy::config::{ConfigDir, DeviceConfig};
use shimgate_proxy::enroll::{EnrollOptions, enroll};
use shimgate_registry::{Action, Dest, NewRule, NewToken, Proto, Registry, Subject};
use shimgate_wire::code::EnrollmentCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use shimgate_gateway::Gateway;
use shimgate_gateway::console;
use shimgate_gateway::paths::{DataDir, GatewayConfig};

use crate::process::stop_on_signal;

#[derive(Args)]
pub struct DemoArgs {
    /// Where the device's SOCKS5 proxy listens.
    #[arg(long, default_value = "127.0.0.1:1080")]
    socks: SocketAddr,
    /// Keep the demo's state in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

const BOB_PAGE: &str = "<!doctype html>\n<html><head><title>Bob's service</title></head>\n<body><h1>Hello from bob's device</h1>\n<p>You reached bob.vpn.internal peer to peer: the bytes went straight from your device to bob's, encrypted with a key the gateway brokered.</p></body></html>\n";

const PAGE: &str = "<!doctype html>\n<html><head><title>Intranet</title></head>\n<body><h1>Welcome to the intranet</h1>\n<p>You reached intranet.internal through shimgate: this page is only reachable from the gateway.</p></body></html>\n";

/// Serves `page` to every HTTP request until `stop`, whatever the client
/// does with its write side: the request head is read up to its blank line
/// (or the client's EOF), the whole response written, then the connection
/// closed. (hyper under axum::serve dropped the response when a client
/// half-closed right after its request, `printf 'GET / ...' | nc -N`: about
/// 1 request in 50 directly, more through a tunnel.)
async fn serve_page(listener: TcpListener, page: &'static str, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        match accepted {
            Ok((sock, _)) => {
                tokio::spawn(answer(sock, page));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// One request, one response.
async fn answer(mut sock: TcpStream, page: &'static str) {
    const MAX_HEAD: usize = 16 * 1024;
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .is_err()
    {
        return;
    }
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
        page.len()
    );
    let _ = sock.write_all(response.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// Removes the demo's directory when the demo ends, however it ends.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// 8443 if free, else any free port.
async fn gateway_listener() -> anyhow::Result<TcpListener> {
    match TcpListener::bind("127.0.0.1:8443").await {
        Ok(l) => Ok(l),
        Err(_) => Ok(TcpListener::bind("127.0.0.1:0").await?),
    }
}

pub async fn run(args: &DemoArgs) -> anyhow::Result<()> {
    let (root, _scratch) = match &args.dir {
        Some(d) => (d.clone(), None),
        None => {
            let d = std::env::temp_dir().join(format!("shimgate-demo-{}", std::process::id()));
            (d.clone(), Some(Scratch(d)))
        }
    };
    let stop = CancellationToken::new();

    // The intranet: a web app on loopback that only the gateway's alias names.
    let intranet = TcpListener::bind("127.0.0.1:0").await?;
    let intranet_addr = intranet.local_addr()?;
    tokio::spawn(serve_page(intranet, PAGE, stop.clone()));

    // Bob's own service, which only bob's machine can reach until bob exports it.
    let bob_service = match TcpListener::bind("127.0.0.1:8000").await {
        Ok(l) => l,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let bob_port = bob_service.local_addr()?.port();
    tokio::spawn(serve_page(bob_service, BOB_PAGE, stop.clone()));

    // The gateway.
    let listener = gateway_listener().await?;
    let listen = listener.local_addr()?;
    let dir = DataDir::new(root.join("gateway"));
    let config = GatewayConfig {
        aliases: vec![format!("intranet.internal:80={intranet_addr}")],
        ..GatewayConfig::local(listen)
    };
    let ca = shimgate_gateway::init(&dir, &config)
        .context("creating the demo gateway (is another demo using the same --dir?)")?;
    let registry = Registry::connect(&dir.sqlite_registry().display().to_string()).await?;
    registry.migrate().await?;
    registry
        .add_rule(NewRule {
            subject: Subject::Everyone,
            dest: Dest::Domain("intranet.internal".into()),
            ports: "80".parse()?,
            proto: Proto::Tcp,
            program: None,
            local_user: None,
            action: Action::Allow,
            created_by: "demo".into(),
        })
        .await?;
    let bob_name = format!("bob.{}", config.vpn_domain);
    registry
        .add_rule(NewRule {
            subject: Subject::Everyone,
            dest: Dest::Domain(bob_name.clone()),
            ports: bob_port.to_string().parse()?,
            proto: Proto::Tcp,
            program: None,
            local_user: None,
            action: Action::Allow,
            created_by: "demo".into(),
        })
        .await?;
    let mut codes = Vec::new();
    for user in ["demo", "bob"] {
        registry.ensure_user(user).await?;
        let token = registry
            .create_token(NewToken {
                user: user.into(),
                created_by: "demo".into(),
                expires_at: clock::now() + 600,
                uses: 1,
            })
            .await?;
        codes.push(EnrollmentCode {
            gateway: config.public_addr.clone(),
            ca_fingerprint: ca.fingerprint(),
            token_id: token.id,
            secret: token.secret,
            expires_at: token.expires_at,
        });
    }
    let (code, bob_code) = (codes.remove(0), codes.remove(0));
    drop(listener);
    let options = shimgate_gateway::setup::Options {
        listen: Some(listen),
        aliases: Vec::new(),
        ..Default::default()
    };
    let (gw, listener) = shimgate_gateway::start(&dir, registry, &options).await?;
    tokio::spawn(Arc::clone(&gw).run(listener, stop.clone()));
    let (console_url, admin_password) = start_console(Arc::clone(&gw), stop.clone()).await?;

    // The device: enroll over the network like any device, then run its proxy.
    let device_dir = ConfigDir::new(root.join("device"));
    let enrolled = enroll(
        &device_dir,
        &code,
        &EnrollOptions {
            name: Some("demo-laptop".into()),
            listen: Some(args.socks),
            force: true,
        },
    )
    .await?;
    let device = DeviceConfig::load(&device_dir)?;
    let running = match shimgate_proxy::up::start(&device_dir, &device, stop.clone()).await {
        Ok(r) => r,
        Err(shimgate_proxy::up::UpError::Listen { addr, source }) => {
            bail!(
                "cannot listen on {addr} ({source}): is another SOCKS proxy running? Try --socks 127.0.0.1:1081"
            )
        }
        Err(e) => return Err(e.into()),
    };
    // Bob: a second device exporting its service; its own SOCKS port is
    // any free one (the demo's curl goes through the first device).
    let bob_dir = ConfigDir::new(root.join("bob"));
    enroll(
        &bob_dir,
        &bob_code,
        &EnrollOptions {
            name: Some("bob".into()),
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            force: true,
        },
    )
    .await?;
    let mut bob = DeviceConfig::load(&bob_dir)?;
    bob.exports = vec![shimgate_proxy::config::Export {
        port: bob_port,
        proto: Default::default(),
    }];
    bob.save(&bob_dir)?;
    let bob_running = shimgate_proxy::up::start(&bob_dir, &bob, stop.clone()).await?;
    for (who, board) in [("device", &running.board), ("bob", &bob_running.board)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !board.snapshot().connected {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "the demo {who} could not connect to its gateway: {:?}",
                    board.snapshot().last_error
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let socks = running.socks;
    println!();
    println!("shimgate demo is running.");
    println!(
        "  gateway   {listen} (CA, registry: {})",
        dir.root().display()
    );
    println!(
        "  device    {} ({}, VPN IP {}) enrolled as user demo",
        enrolled.device_name, enrolled.vpn_name, enrolled.vpn_ip
    );
    println!("  socks5    {socks}");
    println!(
        "  bob       {bob_name} (VPN IP {}) exports its web service on port {bob_port}",
        bob.vpn_ip
    );
    println!("  console   {console_url} (sign in as admin, one-time password {admin_password})");
    println!();
    println!("Try it:");
    println!("  curl --socks5-hostname {socks} http://intranet.internal/");
    println!("and, to see that the name means nothing without the VPN:");
    println!("  curl http://intranet.internal/");
    println!("Peer to peer, straight to bob's device (the gateway only brokers the key):");
    println!("  curl --socks5-hostname {socks} http://{bob_name}:{bob_port}/");
    println!();
    println!("Ctrl-C stops everything.");
    stop_on_signal(stop.clone()).await;
    running.board.remove();
    bob_running.board.remove();
    println!("demo stopped");
    Ok(())
}

/// The demo's console: an admin `admin` with a fresh one-time password, served on
/// 127.0.0.1:8080 if free, else on any free port. Returns the URL and the password.
async fn start_console(
    gw: Arc<Gateway>,
    stop: CancellationToken,
) -> anyhow::Result<(String, String)> {
    let password = console::auth::one_time_password();
    gw.registry().create_admin("admin", &password, true).await?;
    let mut opts = console::Options {
        addr: console::DEFAULT_ADDR.parse()?,
        tls: None,
        insecure_http: false,
        public_url: None,
    };
    let running = match console::start(Arc::clone(&gw), &opts, stop.clone()).await {
        Ok(r) => r,
        Err(console::StartError::Bind { .. }) => {
            opts.addr.set_port(0);
            console::start(gw, &opts, stop).await?
        }
        Err(e) => return Err(e.into()),
    };
    Ok((running.url, password))
}
