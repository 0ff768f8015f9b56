//! Users, groups and group membership.

use shimgate_registry::Error;

use crate::harness::{Env, both_backends};

both_backends!(users_and_groups);

async fn users_and_groups(env: Env) {
    let r = &env.reg;
    let alice = r.ensure_user("alice").await.expect("alice");
    assert_eq!(alice.name, "alice");
    assert_eq!(r.ensure_user("alice").await.expect("alice again"), alice);
    let bob = r.ensure_user("bob").await.expect("bob");
    assert_ne!(alice.id, bob.id);
    assert_eq!(
        r.user_by_name("bob").await.expect("lookup"),
        Some(bob.clone())
    );
    assert_eq!(r.user_by_name("carol").await.expect("lookup"), None);
    assert!(matches!(
        r.ensure_user("").await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        r.ensure_user("bad\nname").await,
        Err(Error::Invalid { .. })
    ));

    let seq0 = r.change_seq().await.expect("seq");
    r.add_to_group("alice", "ops").await.expect("add");
    r.add_to_group("alice", "dev").await.expect("add");
    let seq1 = r.change_seq().await.expect("seq");
    assert!(seq1 >= seq0 + 2, "membership changes bump the sequence");
    r.add_to_group("alice", "ops")
        .await
        .expect("add again is fine");
    assert_eq!(
        r.change_seq().await.expect("seq"),
        seq1,
        "a no-op add does not bump"
    );
    r.add_to_group("bob", "ops").await.expect("add");

    assert_eq!(r.groups_of(alice.id).await.expect("groups"), ["dev", "ops"]);
    assert_eq!(r.groups_of(bob.id).await.expect("groups"), ["ops"]);
    assert!(r.groups_of(987_654).await.expect("groups").is_empty());

    assert!(matches!(
        r.add_to_group("nobody", "ops").await,
        Err(Error::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        r.add_to_group("alice", "").await,
        Err(Error::Invalid { .. })
    ));

    let users = r.list_users().await.expect("list");
    let summary: Vec<(&str, Vec<&str>)> = users
        .iter()
        .map(|u| {
            (
                u.user.name.as_str(),
                u.groups.iter().map(String::as_str).collect(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [("alice", vec!["dev", "ops"]), ("bob", vec!["ops"])]
    );

    let seq2 = r.change_seq().await.expect("seq");
    assert!(r.remove_from_group("bob", "ops").await.expect("remove"));
    assert!(r.change_seq().await.expect("seq") > seq2);
    assert!(
        !r.remove_from_group("bob", "ops")
            .await
            .expect("remove again")
    );
    assert!(r.groups_of(bob.id).await.expect("groups").is_empty());
}
