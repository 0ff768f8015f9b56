//! A real headless Chromium driven over WebDriver (fantoccini + Debian's
//! chromedriver), and where its screenshots go.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::env::{free_port, unique, which};
use super::proc::{Proc, clean_env, poll};

/// Where screenshots go: `<workspace>/target/test-artifacts/<what>`.
pub fn artifacts(what: &str) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("test-artifacts")
        .join(what);
    std::fs::create_dir_all(&dir).expect("creating the artifacts dir");
    dir
}

/// A running chromedriver, and a directory for browser profiles.
pub struct Driver {
    _proc: Proc,
    url: String,
    profile: tempfile::TempDir,
}

pub fn chromedriver() -> Driver {
    let (Some(driver), Some(_)) = (which("chromedriver"), which("chromium")) else {
        panic!(
            "chromium and chromedriver are needed for the browser test: \
             apt-get install chromium chromium-driver (tests/run.sh does)"
        );
    };
    let profile = tempfile::Builder::new()
        .prefix("sg-e2e-chrome-")
        .tempdir()
        .unwrap();
    let port = free_port();
    let mut cmd = Command::new(driver);
    cmd.arg(format!("--port={port}"));
    clean_env(&mut cmd, profile.path());
    let proc = Proc::spawn("chromedriver", &mut cmd, profile.path());
    let addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port);
    poll(
        "chromedriver to listen",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || TcpStream::connect(addr).ok(),
    );
    Driver {
        _proc: proc,
        url: format!("http://{addr}"),
        profile,
    }
}

/// A headless Chromium session with these extra command-line arguments.
pub async fn browser(driver: &Driver, extra: &[String]) -> fantoccini::Client {
    let mut args = vec![
        "--headless=new".to_owned(),
        "--no-sandbox".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--window-size=1280,1000".to_owned(),
        format!(
            "--user-data-dir={}",
            driver.profile.path().join(unique("profile")).display()
        ),
    ];
    args.extend_from_slice(extra);
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({ "binary": "/usr/bin/chromium", "args": args }),
    );
    fantoccini::ClientBuilder::rustls()
        .expect("rustls")
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a WebDriver session with headless Chromium")
}
