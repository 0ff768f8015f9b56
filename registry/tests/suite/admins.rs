//! Console administrators: argon2id password hashes, checking and changing passwords.

use shimgate_registry::Error;

use crate::harness::{Env, both_backends};

both_backends!(admins);

async fn admins(env: Env) {
    let r = &env.reg;
    assert!(matches!(
        r.create_admin("root", "short", false).await,
        Err(Error::Invalid { .. })
    ));
    let admin = r
        .create_admin("root", "correct horse battery", true)
        .await
        .expect("create admin");
    assert_eq!(admin.name, "root");
    assert!(admin.one_time);
    assert!(matches!(
        r.create_admin("root", "another long password", false).await,
        Err(Error::Conflict(_))
    ));

    // Only an argon2id hash is stored.
    let mut raw = env.raw().await;
    let stored: String =
        sqlx::query_scalar("SELECT password_hash FROM console_admins WHERE name = 'root'")
            .fetch_one(&mut raw)
            .await
            .expect("raw read");
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains("correct horse"));

    let ok = r
        .check_admin_password("root", "correct horse battery")
        .await
        .expect("check");
    assert_eq!(ok, Some(admin.clone()));
    for (name, pw) in [
        ("root", "correct horse batterY"),
        ("root", ""),
        ("nobody", "correct horse battery"),
    ] {
        assert_eq!(
            r.check_admin_password(name, pw).await.expect("check"),
            None,
            "{name}/{pw}"
        );
    }
    assert_eq!(
        r.check_admin_password("root", &"x".repeat(5000))
            .await
            .expect("check"),
        None
    );

    r.set_admin_password("root", "a brand new password", false)
        .await
        .expect("set password");
    assert_eq!(
        r.check_admin_password("root", "correct horse battery")
            .await
            .expect("check"),
        None
    );
    let changed = r
        .check_admin_password("root", "a brand new password")
        .await
        .expect("check")
        .expect("the new password works");
    assert!(!changed.one_time, "a chosen password is not one-time");
    assert!(matches!(
        r.set_admin_password("nobody", "a brand new password", false)
            .await,
        Err(Error::NotFound { .. })
    ));
    assert_eq!(r.list_admins().await.expect("list"), [changed]);
}
