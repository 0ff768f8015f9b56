//! API tokens: checking, revoking, listing; only the secret's hash is stored.

use sha2::{Digest, Sha256};

use crate::harness::{Env, both_backends};

both_backends!(api_tokens);

async fn api_tokens(env: Env) {
    let r = &env.reg;
    let t = r.create_api_token("ci", "root").await.expect("create");
    let bearer = t.bearer();
    assert!(!format!("{t:?}").contains(&hex::encode(t.secret)));
    let row = r
        .check_api_token(&bearer, 50)
        .await
        .expect("check")
        .expect("valid");
    assert_eq!((row.name.as_str(), row.last_used), ("ci", Some(50)));

    let mut raw = env.raw().await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM api_tokens WHERE id = $1")
        .bind(t.id_hex())
        .fetch_one(&mut raw)
        .await
        .expect("raw read");
    assert_eq!(stored, Sha256::digest(t.secret).to_vec());

    let mut wrong = t.clone();
    wrong.secret[31] ^= 1;
    for bad in [
        wrong.bearer(),
        String::new(),
        "sga_00_00".into(),
        "garbage".into(),
    ] {
        assert_eq!(r.check_api_token(&bad, 51).await.expect("check"), None);
    }
    assert!(r.revoke_api_token(&t.id_hex()).await.expect("revoke"));
    assert!(!r.revoke_api_token(&t.id_hex()).await.expect("again"));
    assert_eq!(r.check_api_token(&bearer, 52).await.expect("check"), None);
    let list = r.list_api_tokens().await.expect("list");
    assert_eq!(list.len(), 1);
    assert!(list[0].revoked);
    assert_eq!(list[0].last_used, Some(50));
}
