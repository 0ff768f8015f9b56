//! The audit log: appending, listing newest first, searching with filters and pages.

use shimgate_registry::{AuditQuery, NewAudit};

use crate::harness::{Env, both_backends};

both_backends!(audit, audit_search, audit_batch_spanning_several_inserts);

async fn audit(env: Env) {
    let r = &env.reg;
    let entry = |at: i64, target: &str, source: Option<&str>| NewAudit {
        at,
        actor: "admin".into(),
        action: "device.revoke".into(),
        target: target.into(),
        source_addr: source.map(Into::into),
        detail: format!("detail {target}"),
        gateway: (target == "b").then(|| "gw-b.test".into()),
    };
    r.audit(entry(10, "a", Some("192.0.2.1:5555")))
        .await
        .expect("audit");
    r.audit(entry(30, "c", None)).await.expect("audit");
    r.audit(entry(20, "b", None)).await.expect("audit");
    r.audit(entry(30, "d", Some("[2001:db8::1]:443")))
        .await
        .expect("audit");

    let all = r.list_audit(10).await.expect("list");
    let targets: Vec<&str> = all.iter().map(|e| e.target.as_str()).collect();
    assert_eq!(
        targets,
        ["d", "c", "b", "a"],
        "newest first, ties by insertion"
    );
    assert_eq!(all[0].source_addr.as_deref(), Some("[2001:db8::1]:443"));
    assert_eq!(all[1].source_addr, None);
    assert_eq!(all[3].at, 10);
    assert_eq!(all[3].actor, "admin");
    assert_eq!(all[3].action, "device.revoke");
    assert_eq!(all[3].detail, "detail a");
    assert_eq!(
        all[2].gateway.as_deref(),
        Some("gw-b.test"),
        "the gateway that wrote it"
    );
    assert_eq!(all[3].gateway, None);

    let two = r.list_audit(2).await.expect("list");
    assert_eq!(two, all[..2]);
    assert!(r.list_audit(0).await.expect("list").is_empty());
    assert!(r.list_audit(-5).await.expect("list").is_empty());
}

async fn audit_search(env: Env) {
    let r = &env.reg;
    let entry = |at: i64, actor: &str, action: &str, target: &str| NewAudit {
        at,
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        source_addr: None,
        detail: String::new(),
        gateway: None,
    };
    for i in 0..30 {
        let (actor, action) = if i % 3 == 0 {
            ("root", "device.revoke")
        } else {
            ("cli:x", "token_create")
        };
        r.audit(entry(i, actor, action, &format!("t{i}")))
            .await
            .expect("audit");
    }
    r.audit(entry(99, "root", "devices", "t_%"))
        .await
        .expect("audit");
    let q = |actor: &str, action: &str, target: &str, offset: i64, limit: i64| AuditQuery {
        actor: actor.into(),
        action: action.into(),
        target: target.into(),
        offset,
        limit,
    };
    let all = r.search_audit(&q("", "", "", 0, 100)).await.expect("all");
    assert_eq!(all.len(), 31);
    let page2 = r.search_audit(&q("", "", "", 10, 10)).await.expect("page");
    assert_eq!(page2, all[10..20]);
    let roots = r.search_audit(&q("root", "", "", 0, 100)).await.expect("q");
    assert_eq!(roots.len(), 11);
    let revokes = r
        .search_audit(&q("", "device", "", 0, 100))
        .await
        .expect("q");
    assert_eq!(revokes.len(), 10, "a prefix matches at a dot only");
    assert!(revokes.iter().all(|e| e.action == "device.revoke"));
    let exact = r
        .search_audit(&q("", "device.revoke", "t3", 0, 100))
        .await
        .expect("q");
    assert_eq!(exact.len(), 1);
    assert_eq!(
        r.search_audit(&q("", "token", "", 0, 100))
            .await
            .expect("q")
            .len(),
        0,
        "wildcards in the filter are literal"
    );
    assert_eq!(
        r.search_audit(&q("", "", "t_%", 0, 100))
            .await
            .expect("q")
            .len(),
        1
    );
    assert!(
        r.search_audit(&q("", "", "", -3, -1))
            .await
            .expect("q")
            .is_empty()
    );
}

/// A batch longer than one multi-row `INSERT` (256 rows) lands whole, in
/// order, each row with its own values (a placeholder numbered wrong would
/// shift columns or rows).
async fn audit_batch_spanning_several_inserts(env: Env) {
    let r = &env.reg;
    let entries: Vec<NewAudit> = (0..600)
        .map(|i| NewAudit {
            at: 1_000,
            actor: format!("device-{i}"),
            action: "tunnel".into(),
            target: format!("10.20.0.{}:{i}", i % 250),
            source_addr: (i % 2 == 0).then(|| format!("192.0.2.{}:4000", i % 250)),
            detail: format!("n={i}"),
            gateway: (i % 3 == 0).then(|| format!("gw-{i}")),
        })
        .collect();
    r.audit_batch(&entries).await.expect("audit batch");
    let mut rows = r.list_audit(1_000).await.expect("list");
    rows.reverse();
    assert_eq!(rows.len(), entries.len());
    for (row, e) in rows.iter().zip(&entries) {
        assert_eq!(
            (
                &row.actor,
                &row.action,
                &row.target,
                &row.source_addr,
                &row.detail,
                row.at
            ),
            (
                &e.actor,
                &e.action,
                &e.target,
                &e.source_addr,
                &e.detail,
                e.at
            )
        );
    }
}
