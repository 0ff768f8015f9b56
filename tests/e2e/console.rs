//! The web console of a real gateway process: security cases spoken in
//! plain HTTP/1.1 (CSRF, escaping, API tokens, sign-in throttling), and the
//! invitation flow in a real headless Chromium driven over WebDriver
//! (fantoccini + Debian's chromium-driver), with screenshots saved under
//! `target/test-artifacts/console/`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::harness::browser::{browser, chromedriver};
use crate::harness::env::free_port;
use crate::harness::proc::{Proc, clean_env};
use crate::harness::socks::{self, connect, connect_ok, http_get};
use crate::harness::web::{Agent, hidden, text_of};
use crate::harness::*;

/// A gateway serving its console on a free loopback port, with admin `root`, who has
/// replaced the one-time password `admin create` printed.
struct Console {
    gw: Gateway,
    addr: SocketAddr,
    password: String,
}

const CHOSEN: &str = "a password root chose";

/// Signs in with a one-time password and replaces it with `chosen`.
fn first_sign_in(addr: SocketAddr, name: &str, one_time: &str, chosen: &str) -> Agent {
    let mut a = Agent::new(addr);
    let r = a.sign_in(name, one_time);
    assert_eq!(r.status, 303, "signing in: {r:?}");
    assert_eq!(
        r.header("location"),
        Some("/password"),
        "a one-time password must be changed"
    );
    let token = a.csrf("/password");
    let r = a.post(
        "/password",
        &[
            ("csrf", &token),
            ("current", one_time),
            ("new", chosen),
            ("repeat", chosen),
        ],
    );
    assert_eq!(r.status, 303, "changing the password: {r:?}");
    assert_eq!(r.header("location"), Some("/devices"));
    a
}

fn console(backend: Backend, allow: &[&str]) -> Console {
    console_of(Gateway::init(backend), allow)
}

fn console_of(mut gw: Gateway, allow: &[&str]) -> Console {
    for dest in allow {
        gw.allow(dest, &[]);
    }
    let out = gw.ok(&["admin", "create", "root"]);
    let one_time = out
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .expect("a one-time password")
        .to_owned();
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    gw.serve_args(&["--console", &addr.to_string()]);
    poll(
        "the console to accept connections",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || TcpStream::connect(addr).ok(),
    );
    first_sign_in(addr, "root", &one_time, CHOSEN);
    Console {
        gw,
        addr,
        password: CHOSEN.to_owned(),
    }
}

impl Console {
    fn admin(&self) -> Agent {
        let mut a = Agent::new(self.addr);
        let r = a.sign_in("root", &self.password);
        assert_eq!(r.status, 303, "signing in: {r:?}\n{}", self.gw.logs());
        a
    }
}

// ----- security cases -----

#[test]
fn console_forms_need_a_csrf_token() {
    let c = console(Backend::Sqlite, &[]);
    let mut anon = Agent::new(c.addr);
    let login = anon.get("/login");
    let csp = login.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    // Sign-in itself needs the form's token.
    let r = anon.post(
        "/login",
        &[("name", "root"), ("password", &c.password), ("form", "0")],
    );
    assert_eq!(r.status, 403, "sign-in without a form token: {r:?}");

    let mut a = Agent::new(c.addr);
    let r = a.sign_in("root", &c.password);
    assert_eq!(r.status, 303);
    let session = r
        .set_cookies()
        .find(|v| v.starts_with("sg_session="))
        .expect("a session cookie")
        .to_owned();
    assert!(
        session.contains("HttpOnly") && session.contains("SameSite=Strict"),
        "{session}"
    );
    assert!(!session.contains("Secure"), "plain HTTP: no Secure flag");

    let token = a.csrf("/users");
    let r = a.post("/users", &[("name", "mallory")]);
    assert_eq!(r.status, 403, "a form without its CSRF token: {r:?}");
    let r = a.post("/users", &[("name", "mallory"), ("csrf", &"0".repeat(64))]);
    assert_eq!(r.status, 403, "a form with a wrong CSRF token: {r:?}");
    let r = a.post(
        "/devices/anything/revoke",
        &[("csrf", &token[..token.len() - 1])],
    );
    assert_eq!(r.status, 403, "a revoke with a wrong CSRF token: {r:?}");
    assert!(
        !a.get("/users").body.contains("mallory"),
        "a rejected form changed something"
    );
    let r = a.post("/users", &[("name", "mallory"), ("csrf", &token)]);
    assert_eq!(r.status, 303, "{r:?}");
    assert!(a.get("/users").body.contains("mallory"));

    // Another session's token is not this one's.
    let mut b = c.admin();
    let r = b.post("/users", &[("name", "eve"), ("csrf", &token)]);
    assert_eq!(r.status, 403, "a token from another session: {r:?}");
    // Signed out, nothing is allowed.
    let r = Agent::new(c.addr).post("/users", &[("name", "eve"), ("csrf", &token)]);
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/login"));
}

#[test]
fn console_shows_injected_names_as_text() {
    let c = console(Backend::Sqlite, &[]);
    let evil = "<script>alert(1)</script>";
    let escaped = "&#60;script&#62;alert(1)&#60;/script&#62;";
    let mut a = c.admin();
    let token = a.csrf("/users");
    let r = a.post("/users", &[("name", evil), ("groups", "x\"><b>y")]);
    assert_eq!(r.status, 403);
    let r = a.post(
        "/users",
        &[("name", evil), ("groups", "x\"><b>y"), ("csrf", &token)],
    );
    assert_eq!(r.status, 303, "{r:?}");
    // A device of that user: its name shows on the devices page.
    let _dev = Device::enrolled(&c.gw, evil, "evil-laptop");
    for page in ["/users", "/devices", "/audit"] {
        let body = a.get(page).body;
        assert!(!body.contains(evil), "{page} shows the raw script:\n{body}");
        assert!(!body.contains("<b>y"), "{page} shows raw markup:\n{body}");
        assert!(body.contains(escaped), "{page} lost the name:\n{body}");
    }
    // A device name with markup is refused on the invitation page, and echoed escaped.
    let (link_path, _) = invitation(&mut a, "user", evil);
    let mut holder = Agent::new(c.addr);
    let page = holder.get(&link_path);
    assert_eq!(page.status, 200, "{page:?}");
    let id_path = link_path.split('?').next().unwrap_or_default().to_owned();
    let r = holder.post(
        &id_path,
        &[
            ("s", &hidden(&page.body, "s")),
            ("form", &hidden(&page.body, "form")),
            ("device", "<img src=x onerror=alert(1)>"),
        ],
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(!r.body.contains("<img"), "{}", r.body);
    assert!(r.body.contains("&#60;img"), "{}", r.body);
}

/// Creates an invitation in the console; returns the link's path and query.
fn invitation(a: &mut Agent, kind: &str, name: &str) -> (String, String) {
    let token = a.csrf("/invitations");
    let r = a.post(
        "/invitations",
        &[
            ("csrf", &token),
            ("kind", kind),
            ("name", name),
            ("uses", "1"),
            ("expires", "1h"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let link = text_of(&r.body, "invite-link").replace("&#38;", "&");
    let path = link
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
        .expect("an absolute link");
    (path, link)
}

#[test]
fn api_refuses_missing_wrong_and_revoked_tokens() {
    let c = console(Backend::Sqlite, &[]);
    let mut anon = Agent::new(c.addr);
    let r = anon.get("/api/v1/devices");
    assert_eq!(r.status, 401, "{r:?}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let r = anon.send(
        "GET",
        "/api/v1/devices",
        &[("Authorization", "Bearer sga_00_00")],
        "",
    );
    assert_eq!(r.status, 401);
    let doc = anon.get("/api/v1/openapi.json");
    assert_eq!(doc.status, 200);
    assert!(doc.body.contains("\"openapi\""), "{}", doc.body);
    assert_eq!(anon.get("/healthz").status, 200);
    assert_eq!(anon.get("/readyz").status, 200);

    let mut a = c.admin();
    let token = a.csrf("/api-tokens");
    let r = a.post("/api-tokens", &[("csrf", &token), ("name", "ci")]);
    assert_eq!(r.status, 200, "{r:?}");
    let bearer = text_of(&r.body, "api-token");
    assert!(bearer.starts_with("sga_"), "{bearer}");
    let auth = format!("Bearer {bearer}");
    let r = anon.send("GET", "/api/v1/devices", &[("Authorization", &auth)], "");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.body.trim(), "[]");
    let r = anon.send(
        "POST",
        "/api/v1/users",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"name":"from-api","groups":["staff"]}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = anon.send("GET", "/api/v1/users", &[("Authorization", &auth)], "");
    assert!(r.body.contains("\"groups\":[\"staff\"]"), "{r:?}");
    let r = anon.send(
        "DELETE",
        "/api/v1/users/from-api/groups/staff",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let r = anon.send(
        "DELETE",
        "/api/v1/users/from-api/groups/staff",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 404, "not a member any more: {r:?}");
    let r = anon.send(
        "POST",
        "/api/v1/policy",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"action":"allow","to":"not a destination!","ports":"80"}"#,
    );
    assert_eq!(r.status, 400, "a bad rule says why: {r:?}");
    assert!(r.body.contains("error"), "{}", r.body);
    // A list of ports, stored and shown as written; a bad item is named.
    let json = ("Content-Type", "application/json");
    let r = anon.send(
        "POST",
        "/api/v1/policy",
        &[("Authorization", &auth), json],
        r#"{"action":"allow","to":"192.0.2.0/24","ports":"22,53,8000-8100","proto":"udp"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(r#""ports":"22,53,8000-8100""#),
        "{}",
        r.body
    );
    assert!(r.body.contains(r#""proto":"udp""#), "{}", r.body);
    // ICMP (ping) has no ports: a rule for every port is taken, one for some is refused.
    let r = anon.send(
        "POST",
        "/api/v1/policy",
        &[("Authorization", &auth), json],
        r#"{"action":"allow","to":"192.0.2.0/24","proto":"icmp"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(r#""proto":"icmp""#), "{}", r.body);
    let r = anon.send(
        "POST",
        "/api/v1/policy",
        &[("Authorization", &auth), json],
        r#"{"action":"allow","to":"192.0.2.0/24","ports":"22","proto":"icmp"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("no port"), "{}", r.body);
    // Limited to a program and a local user on the device; a bad program says why.
    let r = anon.send(
        "POST",
        "/api/v1/policy",
        &[("Authorization", &auth), json],
        r#"{"action":"allow","to":"192.0.2.0/24","ports":"5432","program":"psql","local_user":"1000"}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        r.body.contains(r#""program":"psql""#) && r.body.contains(r#""local_user":"1000""#),
        "{}",
        r.body
    );
    let r = anon.send(
        "POST",
        "/api/v1/policy",
        &[("Authorization", &auth), json],
        r#"{"action":"allow","to":"192.0.2.0/24","program":"bin/psql"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("absolute"), "{}", r.body);
    let r = anon.send(
        "POST",
        "/api/v1/policy",
        &[("Authorization", &auth), json],
        r#"{"action":"allow","to":"192.0.2.0/24","ports":"22,70000"}"#,
    );
    assert_eq!(r.status, 400, "{r:?}");
    assert!(
        r.body.contains("70000"),
        "the refusal names the item: {}",
        r.body
    );
    let mut wrong = bearer.clone();
    wrong.pop();
    wrong.push(if bearer.ends_with('0') { '1' } else { '0' });
    let r = anon.send(
        "GET",
        "/api/v1/users",
        &[("Authorization", &format!("Bearer {wrong}"))],
        "",
    );
    assert_eq!(r.status, 401, "a wrong secret: {r:?}");

    // Revoked in the console: refused at once.
    let page = a.get("/api-tokens");
    let id = page
        .body
        .split("action=\"/api-tokens/")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .expect("a revoke form")
        .to_owned();
    let token = hidden(&page.body, "csrf");
    let r = a.post(&format!("/api-tokens/{id}/revoke"), &[("csrf", &token)]);
    assert_eq!(r.status, 303, "{r:?}");
    let r = anon.send("GET", "/api/v1/devices", &[("Authorization", &auth)], "");
    assert_eq!(r.status, 401, "a revoked token: {r:?}");

    let audit = a.get("/audit?action=api_token").body;
    assert!(
        audit.contains("api_token.create") && audit.contains("api_token.revoke"),
        "{audit}"
    );
    let metrics = anon.get("/metrics").body;
    assert!(
        metrics.contains("shimgate_console_logins_total"),
        "{metrics}"
    );
}

#[test]
fn sign_in_is_throttled() {
    let c = console(Backend::Sqlite, &[]);
    let mut a = Agent::new(c.addr);
    // A name gets a few attempts (the first sign-in and the password change used some).
    let mut wrong = 0;
    let throttled = loop {
        let r = a.sign_in("root", "not the password");
        if r.status == 429 {
            break r;
        }
        assert_eq!(r.status, 401, "wrong password #{wrong}: {r:?}");
        assert!(r.body.contains("Wrong name or password"), "{}", r.body);
        wrong += 1;
        assert!(
            wrong <= 5,
            "still not throttled after {wrong} wrong passwords"
        );
    };
    assert!(
        throttled.body.contains("Too many sign-in attempts"),
        "{}",
        throttled.body
    );
    let r = a.sign_in("root", &c.password);
    assert_eq!(r.status, 429, "the right password while throttled: {r:?}");
    assert!(
        !r.set_cookies().any(|c| c.starts_with("sg_session=")),
        "no session while throttled"
    );
}

/// Two gateways on one Postgres and no sticky load balancer in front: a sign-in through one
/// is a sign-in through the other (its forms' CSRF token included), a sign-out through the
/// other ends it everywhere, and a guesser who spreads wrong passwords over both gets no more
/// attempts than through one (with a throttle per gateway, alternating would double them).
#[test]
fn console_sign_in_state_is_shared_by_gateways() {
    let c = console(Backend::Postgres, &[]);
    let mut b_spec = GatewaySpec::localhost();
    b_spec.names = vec!["gw-b.test".into()];
    let mut b = Gateway::init_on(c.gw.db.shared(), b_spec);
    let b_addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    b.serve_args(&["--console", &b_addr.to_string()]);
    poll(
        "gateway b's console to accept connections",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || TcpStream::connect(b_addr).ok(),
    );

    let mut at_a = c.admin();
    let mut at_b = Agent::new(b_addr);
    at_b.cookies = at_a.cookies.clone();
    let page = at_b.get("/devices");
    assert_eq!(page.status, 200, "the session from a, at b: {page:?}");
    let token = at_a.csrf("/devices");
    let r = at_b.post("/logout", &[("csrf", &token)]);
    assert_eq!(r.status, 303, "signing out at b with a's form token: {r:?}");
    assert_eq!(r.header("location"), Some("/login"));
    let r = at_a.get("/devices");
    assert_eq!(
        r.status, 303,
        "signed out at b, still signed in at a: {r:?}"
    );
    assert_eq!(r.header("location"), Some("/login"));
    // Each entry names the gateway it was made through.
    let audit = c.gw.ok(&["audit", "--action", "console.log"]);
    let line = |action: &str| {
        audit
            .lines()
            .find(|l| l.contains(&format!(" {action} ")))
            .unwrap_or_else(|| panic!("no {action} entry: {audit}"))
            .to_owned()
    };
    assert!(
        line("console.logout").ends_with(" via gw-b.test"),
        "{audit}"
    );
    assert!(line("console.login").ends_with(" via localhost"), "{audit}");

    // root's attempts so far: the first sign-in, the password change, c.admin(); five at once
    // are allowed, then one every 30 s.
    let (mut guess_a, mut guess_b) = (Agent::new(c.addr), Agent::new(b_addr));
    let mut wrong = 0;
    loop {
        let guesser = if wrong % 2 == 0 {
            &mut guess_a
        } else {
            &mut guess_b
        };
        let r = guesser.sign_in("root", "not the password");
        if r.status == 429 {
            break;
        }
        assert_eq!(r.status, 401, "wrong password #{wrong}: {r:?}");
        wrong += 1;
        assert!(
            wrong <= 3,
            "{wrong} wrong passwords spread over two gateways and still not throttled"
        );
    }
    for (at, guesser) in [("a", &mut guess_a), ("b", &mut guess_b)] {
        let r = guesser.sign_in("root", &c.password);
        assert_eq!(
            r.status, 429,
            "the right password at {at} while throttled: {r:?}"
        );
    }
}

#[test]
fn a_one_time_password_must_be_changed_first() {
    let mut gw = Gateway::init(Backend::Sqlite);
    let out = gw.ok(&["admin", "create", "ops"]);
    let one_time = out
        .lines()
        .map(str::trim)
        .rfind(|l| !l.is_empty())
        .unwrap()
        .to_owned();
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    gw.serve_args(&["--console", &addr.to_string()]);
    poll(
        "the console to accept connections",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || TcpStream::connect(addr).ok(),
    );
    let mut a = Agent::new(addr);
    let r = a.sign_in("ops", &one_time);
    assert_eq!(r.header("location"), Some("/password"), "{r:?}");
    // Until the password is changed, every page and form leads to the password page.
    for page in ["/devices", "/users", "/audit"] {
        let r = a.get(page);
        assert_eq!(
            (r.status, r.header("location")),
            (303, Some("/password")),
            "{page}"
        );
    }
    let token = a.csrf("/password");
    let r = a.post("/users", &[("csrf", &token), ("name", "sneaky")]);
    assert_eq!(r.header("location"), Some("/password"), "{r:?}");
    let change = |a: &mut Agent, current: &str, new: &str, repeat: &str| {
        a.post(
            "/password",
            &[
                ("csrf", &token),
                ("current", current),
                ("new", new),
                ("repeat", repeat),
            ],
        )
    };
    let r = change(
        &mut a,
        "wrong",
        "a fine new password",
        "a fine new password",
    );
    assert_eq!(r.status, 401, "{r:?}");
    let r = change(
        &mut a,
        &one_time,
        "a fine new password",
        "a different one!!",
    );
    assert_eq!(r.status, 400, "{r:?}");
    let r = change(&mut a, &one_time, "short", "short");
    assert_eq!(r.status, 400, "{r:?}");
    assert!(r.body.contains("at least 12 characters"), "{}", r.body);
    let r = change(
        &mut a,
        &one_time,
        "a fine new password",
        "a fine new password",
    );
    assert_eq!(r.header("location"), Some("/devices"), "{r:?}");
    assert_eq!(a.get("/devices").status, 200);
    assert!(!a.get("/users").body.contains("sneaky"));
    // The one-time password is gone; the new one signs in straight to the console.
    let r = Agent::new(addr).sign_in("ops", &one_time);
    assert_eq!(r.status, 401, "{r:?}");
    let r = Agent::new(addr).sign_in("ops", "a fine new password");
    assert_eq!(r.header("location"), Some("/devices"), "{r:?}");
}

// ----- the browser -----

fn artifacts() -> PathBuf {
    crate::harness::browser::artifacts("console")
}

#[test]
fn browser_invites_enrolls_and_revokes_a_device() {
    let origin = Origin::http(V4, &unique_body("console"));
    let c = console(Backend::Sqlite, &["127.0.0.1/32"]);
    let driver = chromedriver();
    let shots = artifacts();
    let base = format!("http://{}", c.addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use fantoccini::Locator;
        let b = browser(&driver, &[]).await;
        let shot = |name: &'static str| {
            let b = b.clone();
            let path = shots.join(format!("{name}.png"));
            async move {
                let png = b.screenshot().await.expect("screenshot");
                std::fs::write(&path, png).expect("saving a screenshot");
            }
        };

        // Sign in.
        b.goto(&format!("{base}/login")).await.unwrap();
        shot("01-sign-in").await;
        b.find(Locator::Id("name"))
            .await
            .unwrap()
            .send_keys("root")
            .await
            .unwrap();
        b.find(Locator::Id("password"))
            .await
            .unwrap()
            .send_keys(&c.password)
            .await
            .unwrap();
        b.find(Locator::Id("signin"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        b.wait().for_element(Locator::Css("h1")).await.unwrap();
        assert!(b.current_url().await.unwrap().path().ends_with("/devices"));
        shot("02-devices-empty").await;

        // A user, then an invitation for them.
        b.goto(&format!("{base}/users")).await.unwrap();
        b.find(Locator::Id("user-name"))
            .await
            .unwrap()
            .send_keys("alice")
            .await
            .unwrap();
        b.find(Locator::Id("add-user"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let flash = b.wait().for_element(Locator::Id("flash")).await.unwrap();
        assert!(flash.text().await.unwrap().contains("alice"));
        shot("03-users").await;
        b.goto(&format!("{base}/invitations")).await.unwrap();
        b.find(Locator::Id("inv-name"))
            .await
            .unwrap()
            .send_keys("alice")
            .await
            .unwrap();
        b.find(Locator::Id("create-invitation"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let link = b
            .wait()
            .for_element(Locator::Id("invite-link"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(link.starts_with(&format!("{base}/invite/")), "{link}");
        shot("04-invitation-created").await;

        // The invitation page: name the device, get the code.
        b.goto(&link).await.unwrap();
        shot("05-invitation-page").await;
        b.find(Locator::Id("device"))
            .await
            .unwrap()
            .send_keys("browser-laptop")
            .await
            .unwrap();
        b.find(Locator::Id("get-code"))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let code = b
            .wait()
            .for_element(Locator::Id("code"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(code.starts_with("sg1-"), "{code}");
        let command = b
            .find(Locator::Id("command"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(command, format!("shimgate enroll {code}"));
        assert!(b.find(Locator::Css(".qr svg")).await.is_ok(), "a QR code");
        shot("06-enrollment-code").await;

        // A real device enrolls with it; the page notices by itself.
        let mut dev = Device::new("browser-laptop");
        let out = dev.enroll(&code).expect_ok();
        assert!(out.stdout.contains("browser-laptop"), "{out}");
        let ip = b
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css("#enrolled-vpn-ip:not(:empty)"))
            .await
            .expect("the invitation page shows the enrolled device")
            .text()
            .await
            .unwrap();
        assert!(ip.starts_with("100.64."), "{ip}");
        let name = b
            .find(Locator::Id("enrolled-vpn-name"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert_eq!(name, "browser-laptop.vpn.internal");
        shot("07-enrolled").await;

        // The devices page lists it offline, then, once `shimgate up` runs, online without
        // a reload.
        let row = "tr[data-device='browser-laptop']";
        let state = |b: fantoccini::Client| async move {
            b.find(Locator::Css(&format!("{row} .state")))
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        };
        b.goto(&format!("{base}/devices")).await.unwrap();
        assert_eq!(state(b.clone()).await, "offline");
        dev.up();
        let s = connect_ok(dev.socks, V4, origin.port());
        assert!(
            http_get(s, "127.0.0.1").contains("shimgate-e2e console"),
            "the new device reaches the origin"
        );
        let mut online = false;
        for _ in 0..50 {
            if state(b.clone()).await == "online" {
                online = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(online, "the devices page never showed the device online");
        // ...and the gateway it connected to (written by the gateway as it connects).
        let mut gateway = String::new();
        for _ in 0..50 {
            gateway = b
                .find(Locator::Css(&format!("{row} .gateway")))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if gateway == "localhost" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(gateway, "localhost", "the devices page's gateway column");
        shot("08-device-online").await;
        b.find(Locator::Css(&format!("{row} button.revoke")))
            .await
            .unwrap()
            .click()
            .await
            .unwrap();
        let flash = b.wait().for_element(Locator::Id("flash")).await.unwrap();
        assert!(flash.text().await.unwrap().contains("revoked"));
        assert_eq!(state(b.clone()).await, "revoked");
        shot("09-device-revoked").await;
        b.goto(&format!("{base}/audit")).await.unwrap();
        shot("10-audit").await;
        // The same pages on a phone-sized window.
        b.set_window_size(390, 844).await.unwrap();
        b.goto(&format!("{base}/devices")).await.unwrap();
        shot("11-devices-phone").await;
        b.goto(&format!("{base}/invitations")).await.unwrap();
        shot("12-invitations-phone").await;
        b.close().await.unwrap();

        // The proxy's next request is refused (the console reloaded the gateway's cache
        // before answering, so no wait is needed).
        match connect(dev.socks, V4, origin.port()) {
            Ok((code, _)) => assert!(
                code == socks::NOT_ALLOWED || code == socks::GENERAL_FAILURE,
                "a revoked device got SOCKS reply {code:#04x}"
            ),
            Err(e) => panic!("the revoked device's request got no SOCKS reply: {e}"),
        }
    });
}

// ----- more of the same gateway: API actions, serving rules, the demo -----

/// An API token made in the console by `admin`.
fn api_token(admin: &mut Agent) -> String {
    let token = admin.csrf("/api-tokens");
    let r = admin.post("/api-tokens", &[("csrf", &token), ("name", "e2e")]);
    assert_eq!(r.status, 200, "{r:?}");
    format!("Bearer {}", text_of(&r.body, "api-token"))
}

fn api_revoke_and_reenable(backend: Backend) {
    let origin = Origin::http(V4, &unique_body("api"));
    let c = console(backend, &["127.0.0.1/32"]);
    let dev = Device::enrolled_up(&c.gw, USER, "api-laptop");
    let auth = api_token(&mut c.admin());
    let mut api = Agent::new(c.addr);
    let call = |api: &mut Agent, method: &str, path: &str| {
        api.send(method, path, &[("Authorization", &auth)], "")
    };
    let works = || {
        let s = connect_ok(dev.socks, V4, origin.port());
        assert!(http_get(s, "127.0.0.1").contains("shimgate-e2e api"));
    };
    works();
    let listed = call(&mut api, "GET", "/api/v1/devices");
    assert!(
        listed.body.contains("\"name\":\"api-laptop\"") && listed.body.contains("\"online\":true"),
        "{listed:?}"
    );

    let r = call(&mut api, "POST", "/api/v1/devices/api-laptop/revoke");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"status\":\"revoked\""), "{}", r.body);
    match connect(dev.socks, V4, origin.port()) {
        Ok((code, _)) => assert!(
            code == socks::NOT_ALLOWED || code == socks::GENERAL_FAILURE,
            "a revoked device got SOCKS reply {code:#04x}"
        ),
        Err(e) => panic!("no SOCKS reply for a revoked device: {e}"),
    }

    let r = call(&mut api, "POST", "/api/v1/devices/api-laptop/enable");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"status\":\"active\""), "{}", r.body);
    // The gateways see the change within their refresh interval.
    poll(
        "the re-enabled device to reach the origin again",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || matches!(connect(dev.socks, V4, origin.port()), Ok((0, _))).then_some(()),
    );
    works();

    let r = call(&mut api, "POST", "/api/v1/devices/no-such-device/revoke");
    assert_eq!(r.status, 404, "{r:?}");
    let r = call(&mut api, "GET", "/api/v1/audit?action=device&per_page=10");
    assert!(
        r.body.contains("device.revoke")
            && r.body.contains("device.reenable")
            && r.body.contains("api:e2e"),
        "{r:?}"
    );
}
both_backends!(api_revoke_and_reenable);

#[test]
fn console_off_loopback_needs_tls_or_insecure_http() {
    let gw = Gateway::init(Backend::Sqlite);
    let open = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), free_port());
    let out = gw.cli(&[
        "serve",
        "--listen",
        &gw.spec.listen.to_string(),
        "--console",
        &open.to_string(),
    ]);
    assert!(!out.ok(), "plain HTTP on {open} must be refused: {out}");
    assert!(out.stderr.contains("--insecure-http"), "{out}");

    // With the operator's certificate (here: the gateway's own), it serves HTTPS with Secure cookies.
    let mut gw = gw;
    let cert = gw.data_dir.join("server.crt");
    let key = gw.data_dir.join("server.key");
    let port = free_port();
    gw.serve_args(&[
        "--console",
        &format!("0.0.0.0:{port}"),
        "--console-tls-cert",
        cert.to_str().unwrap(),
        "--console-tls-key",
        key.to_str().unwrap(),
    ]);
    let url = format!("https://localhost:{port}/login");
    let out = poll(
        "the TLS console to answer",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let out = curl_args(
                None,
                &[
                    "-si",
                    "--cacert",
                    gw.ca_cert().to_str().unwrap(),
                    url.as_str(),
                ],
            );
            out.ok().then_some(out)
        },
    );
    assert!(out.stdout.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.stdout
            .to_ascii_lowercase()
            .contains("strict-transport-security: max-age="),
        "{out}"
    );
    let cookie = out
        .stdout
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie: sg_form="))
        .unwrap_or_default()
        .to_owned();
    assert!(
        cookie.contains("Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
}

#[test]
fn demo_prints_the_console_and_its_password() {
    let home = std::env::temp_dir().join(crate::harness::env::unique("sg-e2e-demo-console"));
    std::fs::create_dir_all(&home).unwrap();
    let socks = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), free_port());
    let mut cmd = Command::new(crate::harness::env::bin("shimgate-gateway"));
    cmd.args(["demo", "--socks", &socks.to_string()]);
    clean_env(&mut cmd, &home);
    let mut demo = Proc::spawn("demo", &mut cmd, &home);
    let line = poll(
        "the demo to print its console",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            demo.assert_running("starting the demo");
            std::fs::read_to_string(&demo.stdout)
                .unwrap_or_default()
                .lines()
                .find(|l| l.trim_start().starts_with("console "))
                .map(str::to_owned)
        },
    );
    let url = line
        .split_whitespace()
        .nth(1)
        .expect("a URL after `console`");
    let password = line
        .rsplit("password ")
        .next()
        .map(|p| p.trim_end_matches(')').trim())
        .expect("a password");
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .parse()
        .expect("the console URL names an address");
    let mut a = first_sign_in(addr, "admin", password, "the demo admin's own password");
    assert!(a.get("/devices").body.contains("demo-laptop"));
    crate::harness::proc::signal(demo.pid(), libc::SIGINT);
    let _ = demo.terminate(Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&home);
}

#[test]
fn new_devices_can_wait_for_approval() {
    let origin = Origin::http(V4, &unique_body("approval"));
    let c = console(Backend::Sqlite, &["127.0.0.1/32"]);
    let auth = api_token(&mut c.admin());
    let mut api = Agent::new(c.addr);
    let r = api.send(
        "PUT",
        "/api/v1/settings",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"require_approval":true}"#,
    );
    assert_eq!(r.status, 200, "{r:?}");
    let mut dev = Device::new("waiting-laptop");
    let out = dev.enroll(&c.gw.token(USER)).expect_ok();
    assert!(
        out.stdout.contains("approval"),
        "`shimgate enroll` should say the device waits for approval: {out}"
    );
    dev.up_unconnected();
    assert!(
        c.admin().get("/devices").body.contains("awaiting approval"),
        "the devices page shows the device waiting"
    );
    if let Ok((code, _)) = connect(dev.socks, V4, origin.port()) {
        assert_ne!(code, 0, "a device awaiting approval got through");
    }
    let r = api.send(
        "POST",
        "/api/v1/devices/waiting-laptop/approve",
        &[("Authorization", &auth)],
        "",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("\"status\":\"active\""), "{}", r.body);
    poll(
        "the approved device to reach the origin",
        Duration::from_secs(15),
        Duration::from_millis(200),
        || matches!(connect(dev.socks, V4, origin.port()), Ok((0, _))).then_some(()),
    );
}

#[test]
fn chromium_reads_the_intranet_through_the_proxy() {
    let body = unique_body("intranet page");
    let origin = Origin::http(V4, &body);
    let spec =
        GatewaySpec::localhost().alias(format!("intranet.internal:80=127.0.0.1:{}", origin.port()));
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    gw.allow("intranet.internal", &["--ports", "80"]);
    gw.serve();
    let dev = Device::enrolled_up(&gw, USER, "chromium-laptop");
    let driver = chromedriver();
    let shots = artifacts();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let text = rt.block_on(async {
        // Chromium sends the host name to a SOCKS5 proxy: only the gateway resolves it.
        let b = browser(&driver, &[format!("--proxy-server=socks5://{}", dev.socks)]).await;
        b.goto("http://intranet.internal/")
            .await
            .expect("loading the intranet page");
        let text = b
            .find(fantoccini::Locator::Css("body"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let png = b.screenshot().await.expect("screenshot");
        std::fs::write(shots.join("20-intranet-through-the-proxy.png"), png).unwrap();
        b.close().await.unwrap();
        text
    });
    assert_eq!(
        text.trim(),
        body.trim(),
        "the page Chromium read through shimgate"
    );
}

#[test]
fn group_invitations_name_the_user_and_count_devices() {
    let c = console(Backend::Sqlite, &[]);
    c.gw.ok(&["user", "add", "carol", "--group", "staff"]);
    c.gw.ok(&["user", "add", "boss"]);
    let mut a = c.admin();
    let token = a.csrf("/invitations");
    let r = a.post(
        "/invitations",
        &[
            ("csrf", &token),
            ("kind", "group"),
            ("name", "staff"),
            ("uses", "2"),
            ("expires", "1h"),
        ],
    );
    assert_eq!(r.status, 200, "{r:?}");
    let link = text_of(&r.body, "invite-link").replace("&#38;", "&");
    let path = link
        .split_once("://")
        .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_owned()))
        .expect("an absolute link");
    let id_path = path.split('?').next().unwrap_or_default().to_owned();
    let mut holder = Agent::new(c.addr);
    let page = holder.get(&path);
    assert!(
        page.body.contains("group staff") && page.body.contains("name=\"user\""),
        "{}",
        page.body
    );
    let redeem = |holder: &mut Agent, user: &str, device: &str| {
        let page = holder.get(&path);
        holder.post(
            &id_path,
            &[
                ("s", &hidden(&page.body, "s")),
                ("form", &hidden(&page.body, "form")),
                ("user", user),
                ("device", device),
            ],
        )
    };
    let r = redeem(&mut holder, "boss", "boss-pc");
    assert_eq!(r.status, 400, "a non-member's name is refused: {r:?}");
    assert!(r.body.contains("is taken"), "{}", r.body);
    let r = redeem(&mut holder, "dave", "dave-pc");
    assert_eq!(r.status, 200, "{r:?}");
    let code = text_of(&r.body, "code");
    let dev = Device::new("dave-pc");
    dev.enroll(&code).expect_ok();
    let r = redeem(&mut holder, "carol", "carol-phone");
    assert_eq!(r.status, 200, "a member may add a device: {r:?}");
    let r = holder.get(&path);
    assert_eq!(r.status, 410, "a two-device invitation after two: {r:?}");
    let secret = path.split("s=").nth(1).unwrap_or_default().to_owned();
    let form_token = holder.cookies.get("sg_form").cloned().unwrap_or_default();
    let r = holder.post(
        &id_path,
        &[
            ("s", &secret),
            ("form", &form_token),
            ("user", "erin"),
            ("device", "erin-pc"),
        ],
    );
    assert_eq!(r.status, 410, "a third redemption: {r:?}");
    let users = c.gw.ok(&["user", "list"]);
    assert!(
        users
            .lines()
            .any(|l| l.starts_with("dave") && l.contains("staff")),
        "{users}"
    );
    assert!(!users.contains("erin"), "{users}");
    let devices = c.gw.device_list();
    assert!(
        devices
            .lines()
            .any(|l| l.starts_with("dave-pc") && l.contains("dave")),
        "{devices}"
    );
}

#[test]
fn readyz_follows_the_registry() {
    // the server of the test's own runs as the `postgres` user
    if !crate::harness::netns::require_root("console::readyz_follows_the_registry") {
        return;
    }
    let db = crate::harness::db::Database::own_server();
    let c = console_of(Gateway::init_on(db, GatewaySpec::localhost()), &[]);
    let status = |path: &str| Agent::new(c.addr).get(path).status;
    assert_eq!(status("/readyz"), 200);
    let mut a = c.admin();
    let token = a.csrf("/users");
    let auth = api_token(&mut a);
    // Postgres stops: sessions cut, connections refused.
    c.gw.db.server().stop();
    poll(
        "/readyz to say not ready",
        Duration::from_secs(15),
        Duration::from_millis(100),
        || (status("/readyz") == 503).then_some(()),
    );
    assert_eq!(status("/healthz"), 200, "the process itself is fine");
    // console writes: a clear 503, in seconds
    let t = Instant::now();
    let r = a.post("/users", &[("csrf", &token), ("name", "during-outage")]);
    eprintln!(
        "[e2e] a console form write during the outage: {} after {:?}: {:?} {}",
        r.status,
        t.elapsed(),
        r.header("location"),
        r.body
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    // sessions live in the registry too: the form's session cannot be
    // checked, and the answer says why
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("registry is unavailable"), "{}", r.body);
    let t = Instant::now();
    let r = Agent::new(c.addr).send(
        "POST",
        "/api/v1/users",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        r#"{"name":"api-during-outage"}"#,
    );
    eprintln!(
        "[e2e] an API write during the outage: {} after {:?}: {}",
        r.status,
        t.elapsed(),
        r.body
    );
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("registry is unavailable"), "{}", r.body);
    c.gw.db.server().start_again();
    poll(
        "/readyz to say ready again",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || (status("/readyz") == 200).then_some(()),
    );
    // the same write works again, with no manual step
    let r = a.post("/users", &[("csrf", &token), ("name", "after-outage")]);
    assert_eq!(r.status, 303, "{}", r.body);
}

#[test]
fn audit_log_pages_and_filters() {
    let c = console(Backend::Sqlite, &[]);
    let mut a = c.admin();
    let token = a.csrf("/users");
    for i in 0..55 {
        let name = format!("user-{i:02}");
        let r = a.post("/users", &[("csrf", &token), ("name", &name)]);
        assert_eq!(r.status, 303);
    }
    let first = a.get("/audit?action=user");
    assert_eq!(first.status, 200);
    assert_eq!(
        first.body.matches("<td>user.add</td>").count(),
        50,
        "50 per page"
    );
    assert!(
        first.body.contains("user-54") && !first.body.contains("user-04<"),
        "newest first"
    );
    let next = first
        .body
        .split("href=\"")
        .find(|s| s.contains("page=2"))
        .and_then(|s| s.split('"').next())
        .expect("a link to the next page")
        .replace("&#38;", "&")
        .replace("&amp;", "&");
    let second = a.get(&next);
    assert_eq!(
        second.body.matches("<td>user.add</td>").count(),
        5,
        "{next}"
    );
    assert!(second.body.contains("user-00"));
    assert!(second.body.contains("id=\"prev\""));
    assert!(!second.body.contains("id=\"next\""));
    let one = a.get("/audit?target=user-07");
    assert_eq!(one.body.matches("<td>user.add</td>").count(), 1);
    let none = a.get("/audit?actor=nobody");
    assert_eq!(none.body.matches("<td>user.add</td>").count(), 0);
}

/// The sessions page and `GET /api/v1/sessions`: an open tunnel through the
/// gateway, and a peer session with its path and bytes once it ended; the
/// devices page counts it, `/metrics` has it by path.
#[test]
fn sessions_show_tunnels_and_peer_sessions() {
    let stream = Origin::start(
        V4,
        Mode::Stream {
            chunk: 64,
            every: Duration::from_millis(50),
        },
    );
    let bob_page = Origin::http(V4, "bob's page for the console");
    let c = console(Backend::Sqlite, &["127.0.0.1/32"]);
    c.gw.allow(
        "bob.vpn.internal",
        &["--ports", &bob_page.port().to_string()],
    );
    let alice = Device::enrolled_up(&c.gw, "alice", "alice");
    let mut bob = Device::enrolled(&c.gw, "bob", "bob");
    bob.cli(&["export", &bob_page.port().to_string()])
        .expect_ok();
    bob.up();
    poll(
        "bob to serve its page peer to peer",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || {
            let url = format!("http://bob.vpn.internal:{}/", bob_page.port());
            let out = curl(None, Some("--socks5-hostname"), Some(alice.socks), &url);
            out.stdout.contains("bob's page").then_some(())
        },
    );
    let _tunnel = connect_ok(alice.socks, V4, stream.port());

    let auth = api_token(&mut c.admin());
    let mut api = Agent::new(c.addr);
    let view = poll(
        "the peer session to be reported ended, with the tunnel open",
        Duration::from_secs(10),
        Duration::from_millis(200),
        || {
            let r = api.send("GET", "/api/v1/sessions", &[("Authorization", &auth)], "");
            let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
            let ended = v["peers"].as_array()?.iter().any(|p| {
                p["from"] == "alice"
                    && p["to"] == "bob"
                    && p["state"] == "ended"
                    && p["path"] == "direct"
                    && p["received"].as_u64().unwrap_or(0) > 0
            });
            let tunnel = v["tunnels"].as_array()?.iter().any(|t| {
                t["device"] == "alice" && t["dest"] == format!("127.0.0.1:{}", stream.port())
            });
            (ended && tunnel).then_some(v)
        },
    );
    assert!(view["peer_online"].as_u64().unwrap_or(0) >= 2, "{view}");
    let r = api.send("GET", "/api/v1/sessions", &[], "");
    assert_eq!(r.status, 401, "sessions without a token: {r:?}");

    let mut admin = c.admin();
    let page = admin.get("/sessions");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(
        page.body.contains("id=\"peer-sessions\"") && page.body.contains("direct"),
        "{}",
        page.body
    );
    let devices = admin.get("/devices").body;
    assert!(devices.contains("1 direct, 0 relayed"), "{devices}");
    let metrics = Agent::new(c.addr).get("/metrics").body;
    assert!(
        metrics.contains("shimgate_peer_sessions_total{path=\"direct\"}"),
        "{metrics}"
    );
}
