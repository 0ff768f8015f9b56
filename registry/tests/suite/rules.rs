//! Policy rules: adding, listing and removing them, and reading rules older schemas wrote.

use shimgate_registry::{Action, Dest, Error, NewRule, Ports, Proto, Subject};

use crate::harness::{Env, both_backends};

both_backends!(rules);

fn rule(subject: &str, dest: &str, ports: (u16, u16), action: Action) -> NewRule {
    NewRule {
        subject: subject.parse().expect("subject"),
        dest: dest.parse().expect("dest"),
        ports: Ports::range(ports.0, ports.1).expect("ports"),
        proto: Proto::Tcp,
        program: None,
        local_user: None,
        action,
        created_by: "admin".into(),
    }
}

async fn rules(env: Env) {
    let r = &env.reg;
    let seq0 = r.change_seq().await.expect("seq");
    let a = r
        .add_rule(rule("group:ops", "10.0.0.0/8", (22, 22), Action::Allow))
        .await
        .expect("a");
    let b = r
        .add_rule(rule("*", "Intranet.Internal", (1, 65535), Action::Deny))
        .await
        .expect("b");
    let c = r
        .add_rule(NewRule {
            proto: Proto::Udp,
            ..rule("user:alice", "2001:db8::1/32", (443, 8443), Action::Allow)
        })
        .await
        .expect("c");
    assert!(r.change_seq().await.expect("seq") >= seq0 + 3);

    assert_eq!(a.subject, Subject::Group("ops".into()));
    assert_eq!(b.dest, Dest::Domain("intranet.internal".into()));
    assert_eq!(c.dest.to_string(), "2001:db8::/32", "host bits dropped");
    assert_eq!(c.ports.to_string(), "443-8443");
    assert_eq!((a.proto, c.proto), (Proto::Tcp, Proto::Udp));
    assert_eq!(a.created_by, "admin");

    let listed = r.list_rules().await.expect("list");
    assert_eq!(listed, [a.clone(), b.clone(), c.clone()]);

    // Validation (ports can't be made wrong: `Ports` parses or refuses).
    assert!(Ports::range(0, 10).is_err() && Ports::range(100, 99).is_err());
    for bad in [
        NewRule {
            subject: Subject::User(String::new()),
            ..rule("*", "10.0.0.0/8", (1, 2), Action::Allow)
        },
        NewRule {
            dest: Dest::Domain("*.example.com".into()),
            ..rule("*", "10.0.0.0/8", (1, 2), Action::Allow)
        },
    ] {
        assert!(
            matches!(r.add_rule(bad.clone()).await, Err(Error::Invalid { .. })),
            "{bad:?} should be refused"
        );
    }
    assert_eq!(r.list_rules().await.expect("list").len(), 3);

    let seq1 = r.change_seq().await.expect("seq");
    assert!(r.remove_rule(b.id).await.expect("remove"));
    assert!(r.change_seq().await.expect("seq") > seq1);
    assert!(!r.remove_rule(b.id).await.expect("remove again"));
    assert!(!r.remove_rule(987_654).await.expect("remove unknown"));
    assert_eq!(r.list_rules().await.expect("list"), [a, c]);

    // A rule stored before rules had a protocol (the column's default) still means TCP only.
    let mut raw = env.raw().await;
    sqlx::query(
        "INSERT INTO policy_rules \
         (subject_kind, subject_name, dest, port_lo, port_hi, action, created_by, created_at) \
         VALUES ('everyone', NULL, '192.0.2.0/24', 53, 53, 'allow', 'old', 0)",
    )
    .execute(&mut raw)
    .await
    .expect("a rule as the old schema wrote it");
    let old = r.list_rules().await.expect("list");
    let old = old.last().expect("the old rule");
    assert_eq!(old.proto, Proto::Tcp);
    assert_eq!(old.ports.to_string(), "53", "ports from the old columns");

    // A list of ports is stored and listed as written.
    let list = r
        .add_rule(NewRule {
            ports: "22, 53,80,443,5432,8000-8100".parse().expect("a port list"),
            ..rule("*", "10.20.0.0/16", (1, 1), Action::Allow)
        })
        .await
        .expect("a rule with a port list");
    let listed = r.list_rules().await.expect("list");
    assert_eq!(listed.last(), Some(&list));
    assert_eq!(list.ports.to_string(), "22,53,80,443,5432,8000-8100");

    // Limits to a program and a local user on the device read back; the old rule has none.
    assert_eq!((&old.program, &old.local_user), (&None, &None));
    let limited = r
        .add_rule(NewRule {
            program: Some("/usr/bin/psql".parse().expect("a program")),
            local_user: Some("1000".parse().expect("a uid")),
            ..rule("*", "10.20.0.0/16", (5432, 5432), Action::Allow)
        })
        .await
        .expect("a rule limited to a program");
    let listed = r.list_rules().await.expect("list");
    assert_eq!(listed.last(), Some(&limited));
    assert_eq!(
        limited.summary(),
        "allow * -> 10.20.0.0/16 ports 5432 tcp program=/usr/bin/psql local-user=1000"
    );
}
