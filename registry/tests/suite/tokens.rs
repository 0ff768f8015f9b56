//! Enrollment tokens: issuing, redeeming (also concurrently, from two instances), expiry,
//! cancelling, listing.

use sha2::{Digest, Sha256};
use shimgate_registry::{Error, NewToken, RedeemError};

use crate::harness::{Env, both_backends};

both_backends!(tokens, concurrent_redeem);

fn token(user: &str, expires_at: i64, uses: u32) -> NewToken {
    NewToken {
        user: user.into(),
        created_by: "admin".into(),
        expires_at,
        uses,
    }
}

async fn tokens(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");

    // Missing user and zero uses are refused.
    assert!(matches!(
        r.create_token(token("nobody", 1000, 1)).await,
        Err(Error::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        r.create_token(token("alice", 1000, 0)).await,
        Err(Error::Invalid { .. })
    ));

    let t1 = r.create_token(token("alice", 1000, 1)).await.expect("t1");
    assert_eq!(t1.user, "alice");
    assert_eq!(t1.expires_at, 1000);
    assert!(
        !format!("{t1:?}").contains(&hex::encode(t1.secret)),
        "Debug must not show the secret"
    );

    // Only the hash of the secret is stored.
    let mut raw = env.raw().await;
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_sha256 FROM enrollment_tokens WHERE id = $1")
            .bind(hex::encode(t1.id))
            .fetch_one(&mut raw)
            .await
            .expect("raw read");
    assert_eq!(stored, Sha256::digest(t1.secret).to_vec());
    assert_ne!(stored, t1.secret.to_vec());

    // Wrong secret and unknown id look the same.
    let mut wrong = t1.secret;
    wrong[0] ^= 1;
    assert!(matches!(
        r.redeem_token(&t1.id, &wrong, 10).await,
        Err(RedeemError::Unknown)
    ));
    assert!(matches!(
        r.redeem_token(&[7u8; 16], &t1.secret, 10).await,
        Err(RedeemError::Unknown)
    ));

    let grant = r
        .redeem_token(&t1.id, &t1.secret, 10)
        .await
        .expect("redeem");
    assert_eq!(grant.user_id, alice.id);
    assert_eq!(grant.user_name, "alice");
    assert_eq!(grant.token_id_hex, hex::encode(t1.id));
    assert!(matches!(
        r.redeem_token(&t1.id, &t1.secret, 11).await,
        Err(RedeemError::UsedUp)
    ));
    // A wrong secret still says Unknown for a used-up token (no state leaks without it).
    assert!(matches!(
        r.redeem_token(&t1.id, &wrong, 11).await,
        Err(RedeemError::Unknown)
    ));

    // Expiry: refused at and after expires_at, accepted just before.
    let t2 = r.create_token(token("alice", 1000, 1)).await.expect("t2");
    assert!(matches!(
        r.redeem_token(&t2.id, &t2.secret, 1000).await,
        Err(RedeemError::Expired)
    ));
    assert!(matches!(
        r.redeem_token(&t2.id, &t2.secret, 5000).await,
        Err(RedeemError::Expired)
    ));
    r.redeem_token(&t2.id, &t2.secret, 999)
        .await
        .expect("redeem just before expiry");

    // Cancelled.
    let t3 = r.create_token(token("alice", 1000, 2)).await.expect("t3");
    assert!(r.cancel_token(&t3.id_hex()).await.expect("cancel"));
    assert!(!r.cancel_token(&t3.id_hex()).await.expect("cancel again"));
    assert!(!r.cancel_token("00112233").await.expect("cancel unknown"));
    assert!(matches!(
        r.redeem_token(&t3.id, &t3.secret, 10).await,
        Err(RedeemError::Cancelled)
    ));

    // Several uses: exactly N.
    let t4 = r.create_token(token("alice", 1000, 3)).await.expect("t4");
    for i in 0..3 {
        r.redeem_token(&t4.id, &t4.secret, 10 + i)
            .await
            .expect("redeem within uses");
    }
    assert!(matches!(
        r.redeem_token(&t4.id, &t4.secret, 20).await,
        Err(RedeemError::UsedUp)
    ));

    // Listing.
    let list = r.list_tokens(500).await.expect("list");
    assert_eq!(list.len(), 4);
    let row = |id: &[u8; 16]| {
        list.iter()
            .find(|t| t.id_hex == hex::encode(id))
            .cloned()
            .expect("token listed")
    };
    let r1 = row(&t1.id);
    assert_eq!((r1.uses_left, r1.cancelled, r1.expired), (0, false, false));
    assert_eq!(r1.user, "alice");
    assert_eq!(r1.created_by, "admin");
    assert_eq!(r1.expires_at, 1000);
    let r3 = row(&t3.id);
    assert_eq!((r3.uses_left, r3.cancelled), (2, true));
    assert_eq!(row(&t4.id).uses_left, 0);
    assert!(
        r.list_tokens(1000)
            .await
            .expect("list")
            .iter()
            .all(|t| t.expired)
    );
}

async fn concurrent_redeem(env: Env) {
    let r = env.reg.clone();
    let other = env.reopen().await;
    r.ensure_user("alice").await.expect("alice");

    for uses in [1u32, 3] {
        let t = r
            .create_token(token("alice", 1000, uses))
            .await
            .expect("token");
        let mut tasks = Vec::new();
        for i in 0..16 {
            // Half through each instance: two pools, like two gateways or a gateway and a CLI.
            let reg = if i % 2 == 0 { r.clone() } else { other.clone() };
            let (id, secret) = (t.id, t.secret);
            tasks.push(tokio::spawn(async move {
                reg.redeem_token(&id, &secret, 10).await
            }));
        }
        let mut won = 0;
        for task in tasks {
            match task.await.expect("task") {
                Ok(_) => won += 1,
                Err(RedeemError::UsedUp) => {}
                Err(e) => panic!("unexpected redeem error: {e}"),
            }
        }
        assert_eq!(won, uses, "exactly {uses} of 16 concurrent redeems win");
    }
}
