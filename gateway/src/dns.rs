//! `POST /v1/dns`: a DNS query a device's TUN responder passes on for a
//! routed name, for the record types it does not answer itself (SRV, TXT,
//! MX, ...). Asked of the gateway's own resolvers (its resolv.conf, read
//! at each call, so a change there needs no restart) only when policy could
//! let the device reach the name, as for `POST /v1/resolve`; the answer is
//! theirs, as they gave it. Otherwise REFUSED, and no lookup.

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::StatusCode;
use shimgate_host::resolvers;
use shimgate_wire::dns;

use crate::cache::Identity;
use crate::respond::{send_body, send_error};
use crate::setup::Gateway;

/// RFC 8484's media type for a DNS message.
const DNS_MESSAGE: &str = "application/dns-message";

impl Gateway {
    pub(crate) async fn dns(
        &self,
        req: http::Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
        who: &Identity,
    ) {
        // A lookup costs the resolver as a tunnel does: the same limits.
        let Some(call) = self
            .admit_call(req, &mut respond, who, dns::MAX_MESSAGE)
            .await
        else {
            return;
        };
        let origin = call.origin;
        let Some((query, q)) = call
            .body
            .as_deref()
            .and_then(|b| dns::parse(b).map(|q| (b, q)))
        else {
            return send_error(
                &mut respond,
                StatusCode::BAD_REQUEST,
                "give one DNS query (a standard query with one question)",
            );
        };
        let rules = self.cache.rules();
        let answer = if crate::policy::could_reach_name(&rules, who, origin.as_ref(), &q.name) {
            match resolvers::ask(&resolvers::system(), query).await {
                Some(answer) => answer,
                None => {
                    tracing::debug!(device = %who.device_name, name = %q.name, "no resolver of this gateway answered");
                    dns::answer(&q, dns::SERVFAIL, &[])
                }
            }
        } else {
            dns::answer(&q, dns::REFUSED, &[])
        };
        send_body(&mut respond, StatusCode::OK, DNS_MESSAGE, answer);
    }
}
