//! The e2e harness: real `shimgate-gateway` and `shimgate` processes, origin
//! servers in the test process, a SOCKS5 client, network namespaces.

pub mod browser;
pub mod db;
pub mod device;
pub mod dns;
pub mod env;
pub mod gateway;
pub mod h2raw;
pub mod hosts;
pub mod netns;
pub mod origin;
pub mod proc;
pub mod servers;
pub mod socks;
pub mod web;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

pub use db::Backend;
pub use device::Device;
pub use gateway::{Gateway, GatewaySpec};
pub use origin::{Mode, Origin};
pub use proc::{Out, poll, run};

pub const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// The user every single-user test enrolls its device for.
pub const USER: &str = "alice";

/// A serving gateway with these `allow --to` rules, and one device of
/// [`USER`] named `device`, up and connected.
pub fn setup(backend: Backend, allow: &[&str], device: &str) -> (Gateway, Device) {
    let gw = Gateway::init(backend);
    for dest in allow {
        gw.allow(dest, &[]);
    }
    let mut gw = gw;
    gw.serve();
    let dev = Device::enrolled_up(&gw, USER, device);
    (gw, dev)
}

/// `curl -sS --max-time 20 <proxy_flag> PROXY URL`, optionally inside a namespace.
pub fn curl(
    ns: Option<&str>,
    proxy_flag: Option<&str>,
    proxy: Option<SocketAddr>,
    url: &str,
) -> Out {
    let mut args: Vec<String> = vec![];
    if let (Some(flag), Some(proxy)) = (proxy_flag, proxy) {
        args.extend([flag.to_owned(), proxy.to_string()]);
    }
    args.push(url.to_owned());
    curl_args(ns, &args)
}

/// `curl -sS -g --max-time 20 ARGS...`, optionally inside a namespace, with
/// no proxy variables from our environment.
pub fn curl_args<S: AsRef<std::ffi::OsStr>>(ns: Option<&str>, args: &[S]) -> Out {
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(env::curl());
            c
        }
        None => Command::new(env::curl()),
    };
    proc::without_proxy_vars(&mut cmd);
    // -g: no globbing, so `http://[::1]:P/` is taken literally
    cmd.args(["-sS", "-g", "--max-time", "20"]);
    cmd.args(args);
    run(&mut cmd, Duration::from_secs(40))
}

/// A body no other test serves, to be sure the response came from our origin.
pub fn unique_body(what: &str) -> String {
    format!("shimgate-e2e {what} {}\n", env::unique("page"))
}
