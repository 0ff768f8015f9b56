//! Device certificates at the TLS layer, in process but over real sockets and
//! real TLS: a revoked device is refused on reconnect even when its client
//! tries to resume a session (the gateway issues no tickets and checks the
//! registry on every handshake); a certificate from another CA is refused;
//! renewal gives a certificate that works; without a certificate a client
//! may only enroll, and only so often.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustls::NamedGroup;
use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Tls13ClientSessionValue};
use rustls::pki_types::ServerName;
use shimgate_gateway::paths::{DataDir, GatewayConfig};
use shimgate_host::clock;
use shimgate_proxy::client::{self, ClientError};
use shimgate_proxy::config::ConfigDir;
use shimgate_proxy::enroll::{EnrollOptions, enroll};
use shimgate_registry::{NewToken, Registry};
use shimgate_wire::code::EnrollmentCode;
use tokio_util::sync::CancellationToken;

/// A session store that remembers whether the server ever handed out a
/// resumption ticket.
#[derive(Debug)]
struct CountingStore {
    inner: ClientSessionMemoryCache,
    tickets: Arc<AtomicUsize>,
}

impl ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: NamedGroup) {
        self.inner.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<NamedGroup> {
        self.inner.kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        n: ServerName<'static>,
        v: rustls::client::Tls12ClientSessionValue,
    ) {
        self.inner.set_tls12_session(n, v)
    }
    fn tls12_session(&self, n: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.inner.tls12_session(n)
    }
    fn remove_tls12_session(&self, n: &ServerName<'static>) {
        self.inner.remove_tls12_session(n)
    }
    fn insert_tls13_ticket(&self, n: ServerName<'static>, v: Tls13ClientSessionValue) {
        self.tickets.fetch_add(1, Ordering::SeqCst);
        self.inner.insert_tls13_ticket(n, v)
    }
    fn take_tls13_ticket(&self, n: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        self.inner.take_tls13_ticket(n)
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    gw_dir: DataDir,
    registry: Registry,
    device: ConfigDir,
    addr: String,
    stop: CancellationToken,
}

async fn gateway_with_enrolled_device() -> Fixture {
    gateway_with_limits(Default::default()).await
}

async fn gateway_with_limits(limits: shimgate_gateway::setup::Limits) -> Fixture {
    gateway_with(limits, |_| {}).await
}

/// A gateway (with `limits`, and `before_start` done to its data dir between
/// `init` and `start`) and a device enrolled at it.
async fn gateway_with(
    limits: shimgate_gateway::setup::Limits,
    before_start: impl FnOnce(&DataDir),
) -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let dir = DataDir::new(tmp.path().join("gw"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let listen = listener.local_addr().unwrap();
    drop(listener);
    let config = GatewayConfig::local(listen);
    let ca = shimgate_gateway::init(&dir, &config).unwrap();
    let registry = Registry::connect(&dir.sqlite_registry().display().to_string())
        .await
        .unwrap();
    registry.migrate().await.unwrap();
    registry.ensure_user("alice").await.unwrap();
    before_start(&dir);
    let token = registry
        .create_token(NewToken {
            user: "alice".into(),
            created_by: "test".into(),
            expires_at: clock::now() + 60,
            uses: 1,
        })
        .await
        .unwrap();
    let (gw, listener) = shimgate_gateway::start(
        &dir,
        registry.clone(),
        &shimgate_gateway::setup::Options {
            listen: Some(listen),
            aliases: Vec::new(),
            limits,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let stop = CancellationToken::new();
    tokio::spawn(gw.run(listener, stop.clone()));
    let code = EnrollmentCode {
        gateway: listen.to_string(),
        ca_fingerprint: ca.fingerprint(),
        token_id: token.id,
        secret: token.secret,
        expires_at: token.expires_at,
    };
    let device = ConfigDir::new(tmp.path().join("dev"));
    enroll(
        &device,
        &code,
        &EnrollOptions {
            name: Some("laptop".into()),
            listen: None,
            force: false,
        },
    )
    .await
    .unwrap();
    Fixture {
        _tmp: tmp,
        gw_dir: dir,
        registry,
        device,
        addr: listen.to_string(),
        stop,
    }
}

#[tokio::test]
async fn revoked_device_cannot_resume_its_way_back_in() {
    let f = gateway_with_enrolled_device().await;
    let tickets = Arc::new(AtomicUsize::new(0));
    let mut tls = (*shimgate_proxy::tls::device(&f.device).unwrap()).clone();
    tls.resumption = rustls::client::Resumption::store(Arc::new(CountingStore {
        inner: ClientSessionMemoryCache::new(8),
        tickets: Arc::clone(&tickets),
    }));
    let tls = Arc::new(tls);
    let name = ServerName::try_from("127.0.0.1").unwrap();

    let (conn, me) = client::connect_device(&f.addr, name.clone(), Arc::clone(&tls))
        .await
        .unwrap();
    assert_eq!(me.device_name, "laptop");
    assert_eq!(me.user, "alice");

    let closed = conn.closed.clone();
    let revoked_at = std::time::Instant::now();
    f.registry
        .revoke_device("laptop", clock::now())
        .await
        .unwrap();
    // The live connection is cut (SQLite: found by polling, well within 1 s).
    tokio::time::timeout(std::time::Duration::from_secs(1), closed.cancelled())
        .await
        .expect("the revoked device's open connection was not closed within 1 s");
    let cut_after = revoked_at.elapsed();

    // Reconnecting, with whatever session state the client kept, is refused
    // and the device is told why.
    match client::connect_device(&f.addr, name, tls).await {
        Err(ClientError::Revoked) => {}
        Err(other) => panic!("expected a revocation refusal, got {other}"),
        Ok(_) => panic!("a revoked device reconnected"),
    }
    assert_eq!(
        tickets.load(Ordering::SeqCst),
        0,
        "the gateway must not issue resumption tickets"
    );
    eprintln!("open connection cut {cut_after:?} after the revoke");
    f.stop.cancel();
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let ours = gateway_with_enrolled_device().await;
    let theirs = gateway_with_enrolled_device().await;
    // A device of the other gateway, trusting our CA so that only the client
    // certificate is in question.
    std::fs::copy(ours.device.ca(), theirs.device.ca()).unwrap();
    let tls = shimgate_proxy::tls::device(&theirs.device).unwrap();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    match client::connect_device(&ours.addr, name, tls).await {
        Err(ClientError::Rejected(why)) => assert!(
            why.contains("UnknownCA") || why.contains("BadCertificate"),
            "{why}"
        ),
        Err(other) => panic!("expected the certificate to be rejected, got {other}"),
        Ok(_) => panic!("a certificate from another CA was accepted"),
    }
    ours.stop.cancel();
    theirs.stop.cancel();
}

#[tokio::test]
async fn renewal_issues_a_fresh_certificate_that_works() {
    let f = gateway_with_enrolled_device().await;
    let before = std::fs::read(f.device.cert()).unwrap();
    let board = Arc::new(shimgate_proxy::status::Board::new(
        f.device.clone(),
        Default::default(),
    ));
    let connector = Arc::new(shimgate_proxy::pool::Connector::new(
        f.addr.clone(),
        ServerName::try_from("127.0.0.1").unwrap(),
        shimgate_proxy::tls::device(&f.device).unwrap(),
    ));
    let workers = shimgate_host::workers::Workers::start(1).unwrap();
    let pool = shimgate_proxy::pool::Pool::new(connector, 1, board, workers);
    // A copy of the old key and certificate, and a connection made with them.
    let name = || ServerName::try_from("127.0.0.1").unwrap();
    let old_tls = shimgate_proxy::tls::device(&f.device).unwrap();
    let (held, _) = client::connect_device(&f.addr, name(), Arc::clone(&old_tls))
        .await
        .unwrap();
    let not_after = shimgate_proxy::renew::renew_once(&f.device, &pool)
        .await
        .unwrap();
    assert!(not_after > clock::now() + 29 * 86400);
    let after = std::fs::read(f.device.cert()).unwrap();
    assert_ne!(before, after, "the certificate was not replaced");
    // Until the new certificate is used, the old one still connects (a
    // device that renewed and crashed before using it is not locked out).
    client::connect_device(&f.addr, name(), Arc::clone(&old_tls))
        .await
        .expect("the old certificate before the new one is used");
    // The new certificate and key authenticate the device.
    let tls = shimgate_proxy::tls::device(&f.device).unwrap();
    let (_conn, me) = client::connect_device(&f.addr, name(), tls).await.unwrap();
    assert_eq!(me.device_name, "laptop");
    // Once it has been used, the old certificate is refused for new
    // connections (SQLite: the gateway polls the registry every 200 ms).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match client::connect_device(&f.addr, name(), Arc::clone(&old_tls)).await {
            Err(ClientError::Revoked) => break,
            Ok(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await
            }
            Ok(_) => panic!("the superseded certificate still connects"),
            Err(other) => panic!("expected a revocation refusal, got {other}"),
        }
    }
    // The connection it already held goes on.
    client::call(
        &held.send,
        http::Method::GET,
        shimgate_wire::enroll::WHOAMI_PATH,
        None,
    )
    .await
    .expect("a connection made before the renewal keeps working");
    f.stop.cancel();
}

#[tokio::test]
async fn without_a_certificate_a_client_may_only_enroll() {
    let f = gateway_with_enrolled_device().await;
    let ca = shimgate_wire::pki::load_certs(&f.device.ca()).unwrap();
    let pin = shimgate_wire::pki::fingerprint_bytes(&ca[0]);
    let tls = shimgate_proxy::tls::pinned(pin).unwrap();
    let conn = client::connect(&f.addr, ServerName::try_from("127.0.0.1").unwrap(), tls)
        .await
        .unwrap();
    for (method, path) in [
        (http::Method::GET, shimgate_wire::enroll::WHOAMI_PATH),
        (http::Method::POST, shimgate_wire::enroll::RENEW_PATH),
    ] {
        match client::call(&conn.send, method, path, Some(b"{}".to_vec())).await {
            Err(ClientError::Refused { status, .. }) => {
                assert_eq!(status, http::StatusCode::UNAUTHORIZED)
            }
            other => panic!("{path} without a certificate: {:?}", other.map(|b| b.len())),
        }
    }
    // A bad enrollment body is answered, not hung on.
    match client::call(
        &conn.send,
        http::Method::POST,
        shimgate_wire::enroll::ENROLL_PATH,
        Some(b"not json".to_vec()),
    )
    .await
    {
        Err(ClientError::Refused { status, .. }) => {
            assert_eq!(status, http::StatusCode::BAD_REQUEST)
        }
        other => panic!("garbage enrollment: {:?}", other.map(|b| b.len())),
    }
    f.stop.cancel();
}

/// Guessing a token's secret: every guess is refused, after 10 attempts
/// from one address the gateway answers 429 (even to the right secret, so
/// the limit cannot be probed around), and once the bucket has refilled
/// (one attempt per 6 s) the right secret enrolls.
#[tokio::test]
async fn enrollment_attempts_are_rate_limited_per_address() {
    let f = gateway_with_enrolled_device().await;
    let (code, right) = fresh_code(&f).await;
    let tmp = tempfile::tempdir().unwrap();
    let attempt = |secret: [u8; 32]| {
        let code = EnrollmentCode {
            secret,
            ..code.clone()
        };
        let dir = tmp.path().to_owned();
        async move { enroll_attempt(&dir, &code).await.0 }
    };
    // The fixture enrolled once from this address already.
    let mut statuses = Vec::new();
    for guess in 1..=11u8 {
        let mut secret = right;
        secret[31] ^= guess;
        statuses.push(attempt(secret).await);
    }
    assert!(statuses[..9].iter().all(|&s| s == 403), "{statuses:?}");
    assert!(statuses[9..].iter().all(|&s| s == 429), "{statuses:?}");
    assert_eq!(
        attempt(right).await,
        429,
        "the limit let the right secret through"
    );
    // The bucket refills at one attempt per 6 s; refused attempts take none.
    let t = std::time::Instant::now();
    loop {
        match attempt(right).await {
            200 => break,
            429 if t.elapsed() < std::time::Duration::from_secs(10) => {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await
            }
            other => panic!(
                "the right secret after the guesses: {other} ({:?})",
                t.elapsed()
            ),
        }
    }
    f.stop.cancel();
}

/// Enrollment attempts per code, whatever the address: with a limit of 2,
/// the third wrong secret for one code is refused 429 (not checked), while
/// another code from the same address is still checked.
#[tokio::test]
async fn enrollment_attempts_are_rate_limited_per_code() {
    let f = gateway_with_limits(shimgate_gateway::setup::Limits {
        enroll_attempts_per_token: 2,
        ..Default::default()
    })
    .await;
    let tmp = tempfile::tempdir().unwrap();
    let mut codes = Vec::new();
    for _ in 0..2 {
        let (code, _) = fresh_code(&f).await;
        // never the right secret
        codes.push(EnrollmentCode {
            secret: [7; 32],
            ..code
        });
    }
    assert_eq!(enroll_attempt(tmp.path(), &codes[0]).await.0, 403);
    assert_eq!(enroll_attempt(tmp.path(), &codes[0]).await.0, 403);
    let (status, message) = enroll_attempt(tmp.path(), &codes[0]).await;
    assert_eq!(status, 429, "{message}");
    assert!(message.contains("with this code"), "{message}");
    assert_eq!(
        enroll_attempt(tmp.path(), &codes[1]).await.0,
        403,
        "another code is still checked"
    );
    f.stop.cancel();
}

/// A fresh one-use token of alice's on the fixture's gateway, as a code.
async fn fresh_code(f: &Fixture) -> (EnrollmentCode, [u8; 32]) {
    let token = f
        .registry
        .create_token(NewToken {
            user: "alice".into(),
            created_by: "test".into(),
            expires_at: clock::now() + 60,
            uses: 1,
        })
        .await
        .unwrap();
    let ca = shimgate_wire::pki::load_certs(&f.device.ca()).unwrap();
    let code = EnrollmentCode {
        gateway: f.addr.clone(),
        ca_fingerprint: shimgate_wire::pki::fingerprint_bytes(&ca[0]),
        token_id: token.id,
        secret: token.secret,
        expires_at: token.expires_at,
    };
    (code, token.secret)
}

/// One enrollment with `code` into a fresh config dir under `dir`: the
/// gateway's HTTP status and message.
async fn enroll_attempt(dir: &std::path::Path, code: &EnrollmentCode) -> (u16, String) {
    let dir = ConfigDir::new(dir.join(format!("attempt-{}", rand_suffix())));
    let opts = EnrollOptions {
        name: Some("guessed".into()),
        listen: None,
        force: true,
    };
    match enroll(&dir, code, &opts).await {
        Ok(_) => (200, String::new()),
        Err(shimgate_proxy::enroll::EnrollError::Gateway(ClientError::Refused {
            status,
            message,
        })) => (status.as_u16(), message),
        Err(e) => panic!("unexpected enrollment error: {e}"),
    }
}

fn rand_suffix() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst) as u64
}

/// A gateway whose server certificate is two thirds through its lifetime
/// renews it as it starts: a fresh one, from the same CA (the device pins the
/// CA, so it enrolls and tunnels as before), valid for two years again.
#[tokio::test]
async fn an_aging_server_certificate_is_renewed() {
    let day = 24 * 3600;
    let f = gateway_with(Default::default(), |dir| {
        // What `init` issued, but made 100 days ago and good for one more day.
        let ca_key =
            rcgen::KeyPair::from_pem(&std::fs::read_to_string(dir.ca_key()).unwrap()).unwrap();
        let issuer = rcgen::Issuer::from_ca_cert_pem(
            &std::fs::read_to_string(dir.ca_cert()).unwrap(),
            ca_key,
        )
        .unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .unwrap();
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(100);
        params.not_after = now + time::Duration::days(1);
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.server_cert(), cert.pem()).unwrap();
        std::fs::write(dir.server_key(), key.serialize_pem()).unwrap();
        let (_, not_after) = shimgate_wire::pki::validity(&dir.server_cert()).unwrap();
        assert!(
            not_after - clock::now() < 2 * day,
            "the aged certificate is in place"
        );
    })
    .await;
    let (_, not_after) = shimgate_wire::pki::validity(&f.gw_dir.server_cert()).unwrap();
    assert!(
        not_after - clock::now() > 700 * day,
        "renewed to two years, not {} days",
        (not_after - clock::now()) / day
    );
    // The device enrolled through the renewed certificate; it tunnels too.
    let tls = shimgate_proxy::tls::device(&f.device).unwrap();
    let name = shimgate_proxy::tls::server_name("localhost").unwrap();
    client::connect_device(&f.addr, name, tls)
        .await
        .expect("a device connects to the renewed certificate");
    f.stop.cancel();
}
