//! Device certificates: expiry, superseding older ones, and what recording one refuses.

use shimgate_registry::Error;

use crate::harness::{Env, both_backends, cert, fingerprint};

both_backends!(
    certificate_expiry,
    certificate_supersede,
    certificate_validation
);

async fn certificate_expiry(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let d = r.create_device(alice.id, "laptop", 1).await.expect("dev");
    r.record_certificate(cert(d.id, "a", 100)).await.expect("a");
    r.record_certificate(cert(d.id, "b", 200)).await.expect("b");
    let fps = |states: Vec<shimgate_registry::CertState>| -> Vec<String> {
        states.into_iter().map(|s| s.fingerprint_hex).collect()
    };
    assert_eq!(
        fps(r.certificate_states(50).await.expect("states")),
        [fingerprint("a"), fingerprint("b")]
    );
    assert_eq!(
        fps(r.certificate_states(100).await.expect("states")),
        [fingerprint("b")],
        "not_after is exclusive"
    );
    assert_eq!(
        fps(r.certificate_states(199).await.expect("states")),
        [fingerprint("b")]
    );
    assert!(r.certificate_states(200).await.expect("states").is_empty());
}

/// A renewed certificate in use supersedes the device's older ones (not
/// other devices', not newer ones), once, with a change notification.
async fn certificate_supersede(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let d = r.create_device(alice.id, "laptop", 1).await.expect("dev");
    let other = r.create_device(alice.id, "phone", 2).await.expect("dev");
    for (device, name) in [(d.id, "a"), (other.id, "p"), (d.id, "b"), (d.id, "c")] {
        r.record_certificate(cert(device, name, 5000))
            .await
            .expect(name);
    }
    let superseded = || async {
        let mut names: Vec<String> = r
            .certificate_states(0)
            .await
            .expect("states")
            .into_iter()
            .filter(|s| s.superseded)
            .map(|s| s.fingerprint_hex)
            .collect();
        names.sort();
        names
    };
    let seq0 = r.change_seq().await.expect("seq");
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("b"), 10)
            .await
            .expect("b in use"),
        1
    );
    assert!(r.change_seq().await.expect("seq") > seq0);
    assert_eq!(superseded().await, [fingerprint("a")]);
    let seq1 = r.change_seq().await.expect("seq");
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("b"), 11)
            .await
            .expect("again"),
        0
    );
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("a"), 11)
            .await
            .expect("an older one"),
        0
    );
    assert_eq!(r.change_seq().await.expect("seq"), seq1, "nothing changed");
    assert_eq!(
        r.supersede_older_certificates(&fingerprint("c"), 12)
            .await
            .expect("c in use"),
        1
    );
    let mut want = vec![fingerprint("a"), fingerprint("b")];
    want.sort();
    assert_eq!(
        superseded().await,
        want,
        "the phone's certificate is untouched"
    );
}

async fn certificate_validation(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    let d = r.create_device(alice.id, "laptop", 1).await.expect("dev");
    let seq0 = r.change_seq().await.expect("seq");
    r.record_certificate(cert(d.id, "a", 100)).await.expect("a");
    assert!(r.change_seq().await.expect("seq") > seq0, "recording bumps");
    let seq1 = r.change_seq().await.expect("seq");

    assert!(matches!(
        r.record_certificate(cert(d.id, "a", 100)).await,
        Err(Error::Conflict(_))
    ));
    assert!(matches!(
        r.record_certificate(cert(987_654, "z", 100)).await,
        Err(Error::NotFound { .. })
    ));
    let mut short = cert(d.id, "c", 100);
    short.fingerprint_hex.truncate(40);
    assert!(matches!(
        r.record_certificate(short).await,
        Err(Error::Invalid { .. })
    ));
    let mut bad_serial = cert(d.id, "c", 100);
    bad_serial.serial_hex = "xyz".into();
    assert!(matches!(
        r.record_certificate(bad_serial).await,
        Err(Error::Invalid { .. })
    ));
    assert_eq!(
        r.change_seq().await.expect("seq"),
        seq1,
        "refused records change nothing"
    );
    assert_eq!(r.certificate_states(0).await.expect("states").len(), 1);
}
