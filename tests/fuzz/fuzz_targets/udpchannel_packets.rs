//! The gateway's (or device's) side of a UDP channel, fed packets: either
//! raw bytes naming the association (first input byte even), as anyone who
//! can reach the UDP port could send, or packets the other end really
//! sealed (first byte odd), some sent twice, altered at input-chosen bytes.
//!
//! Raw bytes never open; of the sealed packets, exactly the unaltered ones
//! open, each once, to what was sealed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shimgate_wire::dest::{Destination, Host};
use shimgate_wire::udpchannel::{ConnSecret, Packet, Side};

const ID: u64 = 0x0102_0304_0506_0708;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let secret = ConnSecret::from_bytes([9; 32]);
    let (mut sealer, _) = secret.ends(ID, Side::Device);
    let (_, mut opener) = secret.ends(ID, Side::Gateway);
    if mode & 1 == 0 {
        let mut packet = ID.to_be_bytes().to_vec();
        packet.extend_from_slice(rest);
        assert!(
            opener.open(&packet).is_err(),
            "a packet nobody sealed opened"
        );
        return;
    }
    // [len][again][flip_at][xor] per packet: a payload of len bytes, sent
    // twice if `again` is odd, one byte flipped if xor != 0.
    let far = Destination::new(Host::parse("dns.corp.internal").expect("a name"), 53)
        .expect("a destination");
    for (i, op) in rest.chunks_exact(4).take(64).enumerate() {
        let [len, again, flip_at, xor] = [op[0], op[1], op[2], op[3]];
        let payload = vec![i as u8; usize::from(len) * 3];
        let packet = if len == 0 {
            sealer.probe().expect("seal a probe")
        } else {
            sealer.datagram(&far, &payload).expect("seal")
        };
        let mut sent = packet.to_vec();
        if xor != 0 {
            let at = usize::from(flip_at) % sent.len();
            sent[at] ^= xor;
            assert!(opener.open(&sent).is_err(), "an altered packet opened");
            continue;
        }
        let opened = opener.open(&sent).expect("an unaltered packet opens");
        let want = if len == 0 {
            Packet::Probe
        } else {
            Packet::Datagram(far.clone(), payload.into())
        };
        assert_eq!(opened, want);
        if again & 1 == 1 {
            assert!(opener.open(&sent).is_err(), "a packet opened twice");
        }
    }
});
