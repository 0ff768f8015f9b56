//! What a program sends to the proxy's SOCKS port: fast-socks5's server
//! protocol over an in-memory pipe, as proxy/src/socks.rs drives it (no
//! auth, or username/password when the first input byte is odd), then the
//! destination the proxy makes of the target
//! (`shimgate_proxy::socks::destination`, which refuses some), put into an
//! HTTP/2 CONNECT request as the proxy's pool does and read as the gateway
//! does. No input may panic or hang; a request the proxy can build reaches
//! the gateway as the same destination.
#![no_main]

use fast_socks5::ReplyError;
use fast_socks5::server::Socks5ServerProtocol;
use fast_socks5::util::target_addr::TargetAddr;
use libfuzzer_sys::fuzz_target;
use shimgate_fuzz::runtime;
use shimgate_wire::dest::{Destination, Host};
use tokio::io::AsyncWriteExt;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, input)) = data.split_first() else {
        return;
    };
    runtime().block_on(async {
        let (mut client, server) = tokio::io::duplex(input.len() + 4096);
        client.write_all(input).await.expect("fits the pipe");
        client.shutdown().await.expect("shutdown");
        let proto = if mode & 1 == 0 {
            Socks5ServerProtocol::accept_no_auth(server).await
        } else {
            Socks5ServerProtocol::accept_password_auth(server, |u, p| u == "user" && p == "pass")
                .await
                .map(|(proto, _)| proto)
        };
        let Ok(proto) = proto else {
            return;
        };
        let Ok((proto, _command, target)) = proto.read_command().await else {
            return;
        };
        // proxy/src/socks.rs refuses what is no destination.
        let Ok(dest) = shimgate_proxy::socks::destination(&target) else {
            let _ = proto
                .reply_error(&ReplyError::AddressTypeNotSupported)
                .await;
            return;
        };
        let (want_host, want_port) = match &target {
            TargetAddr::Ip(sa) => (Host::Ip(sa.ip()), sa.port()),
            TargetAddr::Domain(name, port) => {
                (Host::parse(name).expect("the proxy accepted it"), *port)
            }
        };
        assert_eq!((dest.host(), dest.port()), (&want_host, want_port));
        // proxy/src/pool.rs: `Request::builder().method(CONNECT).uri(dest)`.
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri(dest.to_string())
            .body(())
            .expect("a destination makes a CONNECT request");
        // gateway/src/server.rs `tunnel`.
        let at_gateway = req.uri().authority().map(Destination::from_authority);
        assert_eq!(
            at_gateway,
            Some(Ok(dest.clone())),
            "{dest} reaches the gateway as another destination"
        );
        let _ = proto.reply_error(&ReplyError::GeneralFailure).await;
        drop(client);
    });
});
