//! Browsers on the VPN: the PAC file the proxy serves on its SOCKS port,
//! read over plain HTTP and followed by a real headless Chromium, which
//! reaches an intranet page through the gateway and a peer's exported page,
//! and everything else directly. Screenshots go to
//! `target/test-artifacts/browser/`.

use std::time::Duration;

use crate::harness::browser::{artifacts, browser, chromedriver};
use crate::harness::*;

/// `curl -i URL`: (status line, content type, body).
fn fetch(url: &str) -> (String, String, String) {
    let out = curl_args(None, &["-i", url]).expect_ok();
    let (head, body) = out
        .stdout
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head from {url}: {out}"));
    let status = head.lines().next().unwrap_or_default().trim().to_owned();
    let content_type = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// Loads `url` in the browser, saves a screenshot as `shot`, returns the body text.
async fn page_text(b: &fantoccini::Client, url: &str, shot: &str) -> String {
    b.goto(url)
        .await
        .unwrap_or_else(|e| panic!("Chromium loading {url}: {e}"));
    let text = b
        .find(fantoccini::Locator::Css("body"))
        .await
        .unwrap_or_else(|e| panic!("no body at {url}: {e}"))
        .text()
        .await
        .unwrap();
    let png = b.screenshot().await.expect("screenshot");
    std::fs::write(artifacts("browser").join(shot), png).unwrap();
    text
}

#[test]
fn chromium_follows_the_pac_file() {
    let intranet_body = unique_body("intranet page via the PAC file");
    let intranet = Origin::http(V4, &intranet_body);
    let bob_body = unique_body("bob's page via the PAC file");
    let bob_web = Origin::http(V4, &bob_body);
    let bob_port = bob_web.port().to_string();
    let direct_body = unique_body("a page off the VPN");
    let direct = Origin::http(V4, &direct_body);
    let spec = GatewaySpec::localhost()
        .alias(format!("web.corp.test:80=127.0.0.1:{}", intranet.port()))
        .alias(format!("web.other.test:80=127.0.0.1:{}", direct.port()))
        .alias("db.hidden.test:5432=192.0.2.77:5432");
    let mut gw = Gateway::init_spec(Backend::Sqlite, spec);
    gw.allow("corp.test", &["--ports", "80"]);
    // a name only the gateway knows, allowed through its address
    gw.allow("192.0.2.77/32", &["--ports", "5432"]);
    gw.allow("bob.vpn.internal", &["--ports", &bob_port]);
    gw.serve();
    let alice = Device::enrolled_up(&gw, USER, "alice");
    let mut bob = Device::enrolled(&gw, "bob", "bob");
    bob.cli(&["export", &bob_port]).expect_ok();
    bob.up();
    poll(
        "`shimgate ping bob` to succeed",
        Duration::from_secs(20),
        Duration::from_millis(100),
        || alice.cli(&["ping", "bob", "-c", "1"]).ok().then_some(()),
    );

    // The PAC file, over plain HTTP on the SOCKS port, once the routes are in.
    let pac_url = format!("http://{}/proxy.pac", alice.socks);
    let (status, content_type, pac) = poll(
        "the PAC file to list the gateway's routes",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || {
            let got = fetch(&pac_url);
            got.2.contains("corp.test").then_some(got)
        },
    );
    std::fs::write(artifacts("browser").join("proxy.pac"), &pac).unwrap();
    assert!(status.ends_with("200 OK"), "{status}");
    assert_eq!(content_type, "application/x-ns-proxy-autoconfig");
    let proxy = format!("\"SOCKS5 {0}; SOCKS {0}\"", alice.socks);
    assert!(
        pac.contains(&proxy),
        "the PAC file names the SOCKS port: {pac}"
    );
    assert!(pac.contains("\".vpn.internal\""), "{pac}");
    assert!(pac.contains("\"100.64.0.0\", \"255.192.0.0\""), "{pac}");
    assert!(
        !pac.contains("other.test"),
        "an alias no rule allows stays out of the PAC file: {pac}"
    );
    assert!(
        pac.contains("\"db.hidden.test\""),
        "an alias allowed through a CIDR rule goes to the SOCKS port: {pac}"
    );
    let (status, _, _) = fetch(&format!("http://{}/wpad.dat", alice.socks));
    assert!(status.ends_with("200 OK"), "{status}");
    let (status, _, _) = fetch(&format!("http://{}/other", alice.socks));
    assert!(status.ends_with("404 Not Found"), "{status}");
    // A page that rebinds its own name to 127.0.0.1 cannot read it.
    let rebound = curl_args(None, &["-i", "-H", "Host: rebound.example", &pac_url]).expect_ok();
    assert!(
        rebound.stdout.starts_with("HTTP/1.1 403") && !rebound.stdout.contains("corp.test"),
        "{rebound}"
    );
    // `shimgate status` tells where the file is.
    let out = alice.status(&[]).expect_ok();
    assert!(out.stdout.contains(&pac_url), "{out}");

    let driver = chromedriver();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (intranet_text, bob_text, direct_text) = rt.block_on(async {
        let b = browser(
            &driver,
            &[
                format!("--proxy-pac-url={pac_url}"),
                // A name only this machine resolves: loaded only if it went DIRECT.
                "--host-resolver-rules=MAP direct.example 127.0.0.1".to_owned(),
            ],
        )
        .await;
        // web.corp.test resolves nowhere but on the gateway (its alias).
        let intranet = page_text(&b, "http://web.corp.test/", "10-intranet-via-pac.png").await;
        let bob = page_text(
            &b,
            &format!("http://bob.vpn.internal:{bob_port}/"),
            "20-peer-via-pac.png",
        )
        .await;
        let direct = page_text(
            &b,
            &format!("http://direct.example:{}/", direct.port()),
            "30-direct.png",
        )
        .await;
        b.close().await.unwrap();
        (intranet, bob, direct)
    });
    assert_eq!(
        intranet_text.trim(),
        intranet_body.trim(),
        "the intranet page"
    );
    assert_eq!(bob_text.trim(), bob_body.trim(), "bob's exported page");
    assert_eq!(
        direct_text.trim(),
        direct_body.trim(),
        "the page off the VPN"
    );
    let logs = gw.logs();
    assert!(
        !logs.contains("direct.example"),
        "the gateway saw a request for the DIRECT page: {logs}"
    );
}
