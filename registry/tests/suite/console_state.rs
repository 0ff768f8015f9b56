//! The console's sign-in state in the registry: sessions (lapsing when idle or old, a flash
//! message read once) and sign-in token buckets, taken from two registry instances at once
//! as two gateways would.

use shimgate_registry::{Bucket, ConsoleSession, SessionLimits};

use crate::harness::{Env, both_backends};

both_backends!(console_sessions, sign_in_buckets);

const LIMITS: SessionLimits = SessionLimits {
    idle: 100,
    lifetime: 1_000,
};

async fn console_sessions(env: Env) {
    let r = &env.reg;
    let other = env.reopen().await;
    let s = ConsoleSession {
        admin: "root".into(),
        csrf: "c".repeat(64),
        must_change: true,
        flash: None,
    };
    r.create_console_session("k1", &s, 1_000, LIMITS)
        .await
        .expect("create");
    // Seen from another instance (another gateway), refreshed by each read.
    let got = other
        .console_session("k1", 1_050, LIMITS)
        .await
        .expect("get");
    assert_eq!(got.as_ref(), Some(&s));
    assert!(
        other
            .console_session("nope", 1_050, LIMITS)
            .await
            .expect("get")
            .is_none()
    );
    r.set_console_flash("k1", true, "Rule added.")
        .await
        .expect("flash");
    r.console_password_changed("k1").await.expect("changed");
    let got = other
        .console_session("k1", 1_140, LIMITS)
        .await
        .expect("get")
        .expect("live");
    assert_eq!(got.flash, Some((true, "Rule added.".to_owned())));
    assert!(!got.must_change);
    let got = r
        .console_session("k1", 1_200, LIMITS)
        .await
        .expect("get")
        .expect("live");
    assert_eq!(got.flash, None, "a flash message is shown once");
    // Idle past the limit: gone, for good.
    assert!(
        r.console_session("k1", 1_301, LIMITS)
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        r.console_session("k1", 1_302, LIMITS)
            .await
            .expect("get")
            .is_none()
    );

    // Past its lifetime however busy; sign-out ends one at once.
    r.create_console_session("k2", &s, 2_000, LIMITS)
        .await
        .expect("create");
    for t in (2_050..3_000).step_by(50) {
        assert!(
            r.console_session("k2", t, LIMITS)
                .await
                .expect("get")
                .is_some()
        );
    }
    assert!(
        r.console_session("k2", 3_001, LIMITS)
            .await
            .expect("get")
            .is_none()
    );
    r.create_console_session("k3", &s, 4_000, LIMITS)
        .await
        .expect("create");
    other.end_console_session("k3").await.expect("end");
    assert!(
        r.console_session("k3", 4_001, LIMITS)
            .await
            .expect("get")
            .is_none()
    );
}

async fn sign_in_buckets(env: Env) {
    let r = &env.reg;
    let other = env.reopen().await;
    let bucket = Bucket {
        burst: 5.0,
        every_ms: 30_000,
    };
    // Twenty attempts at once, half through each instance: exactly the burst goes through.
    let t0 = 1_000_000;
    let attempts = (0..20).map(|i| {
        let reg = if i % 2 == 0 { r.clone() } else { other.clone() };
        tokio::spawn(async move { reg.take_attempt("name:root", bucket, t0).await })
    });
    let mut allowed = 0;
    for a in attempts {
        if a.await.expect("task").expect("take") {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 5, "the burst, whichever instance asked");
    // In debt after hammering: one period pays the debt, the next gives one attempt.
    assert!(
        !r.take_attempt("name:root", bucket, t0 + 30_000)
            .await
            .expect("take")
    );
    assert!(
        r.take_attempt("name:root", bucket, t0 + 90_000)
            .await
            .expect("take")
    );
    assert!(
        !r.take_attempt("name:root", bucket, t0 + 90_001)
            .await
            .expect("take")
    );
    // Buckets are apart, and a long rest refills to the burst, not beyond.
    assert!(
        r.take_attempt("addr:192.0.2.1", bucket, t0)
            .await
            .expect("take")
    );
    let later = t0 + 10_000_000;
    let mut ok = 0;
    for _ in 0..7 {
        if other
            .take_attempt("name:root", bucket, later)
            .await
            .expect("take")
        {
            ok += 1;
        }
    }
    assert_eq!(ok, 5);
}
