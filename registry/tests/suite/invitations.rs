//! Invitations for a user or a group, and the enrollment tokens redeeming them makes.

use sha2::{Digest, Sha256};
use shimgate_registry::{Error, Invitee, NewInvitation, RedeemError, Redemption};

use crate::harness::{Env, both_backends};

both_backends!(invitations_for_a_user, invitations_for_a_group);

fn redemption(device: &str, user: Option<&str>) -> Redemption {
    Redemption {
        device_name: device.into(),
        user_name: user.map(Into::into),
        token_expires_at: 900,
    }
}

async fn invitations_for_a_user(env: Env) {
    let r = &env.reg;
    let invite = |invitee: Invitee, uses: u32| NewInvitation {
        invitee,
        created_by: "root".into(),
        expires_at: 1000,
        uses,
    };
    assert!(matches!(
        r.create_invitation(invite(Invitee::User("nobody".into()), 1))
            .await,
        Err(Error::NotFound { .. })
    ));
    let alice = r.ensure_user("alice").await.expect("alice");
    assert!(matches!(
        r.create_invitation(invite(Invitee::User("alice".into()), 0))
            .await,
        Err(Error::Invalid { .. })
    ));
    let inv = r
        .create_invitation(invite(Invitee::User("alice".into()), 1))
        .await
        .expect("invite");
    assert!(!format!("{inv:?}").contains(&inv.secret_hex()));

    let mut raw = env.raw().await;
    let stored: Vec<u8> = sqlx::query_scalar("SELECT secret_sha256 FROM invitations WHERE id = $1")
        .bind(inv.id_hex())
        .fetch_one(&mut raw)
        .await
        .expect("raw read");
    assert_eq!(stored, Sha256::digest(inv.secret).to_vec());

    let mut wrong = inv.secret;
    wrong[5] ^= 0x40;
    assert!(matches!(
        r.check_invitation(&inv.id, &wrong, 10).await,
        Err(RedeemError::Unknown)
    ));
    assert!(matches!(
        r.redeem_invitation(&inv.id, &wrong, redemption("laptop", None), 10)
            .await,
        Err(RedeemError::Unknown)
    ));
    let seen = r
        .check_invitation(&inv.id, &inv.secret, 10)
        .await
        .expect("check");
    assert_eq!(seen.invitee, Invitee::User("alice".into()));
    assert_eq!((seen.max_uses, seen.uses_left), (1, 1));
    assert!(matches!(
        r.check_invitation(&inv.id, &inv.secret, 1000).await,
        Err(RedeemError::Expired)
    ));
    // A bad device name is refused and uses nothing up.
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("", None), 10)
            .await,
        Err(RedeemError::Db(Error::Invalid { .. }))
    ));

    let token = r
        .redeem_invitation(&inv.id, &inv.secret, redemption("laptop", None), 10)
        .await
        .expect("redeem");
    assert_eq!(token.user, "alice");
    assert_eq!(token.expires_at, 900);
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("laptop", None), 11)
            .await,
        Err(RedeemError::UsedUp)
    ));

    // The token it made is an ordinary one that fixes the device name...
    let grant = r
        .redeem_token(&token.id, &token.secret, 20)
        .await
        .expect("redeem token");
    assert_eq!(grant.user_id, alice.id);
    assert_eq!(grant.device_name.as_deref(), Some("laptop"));
    // ... and, once a device enrolled with it, leads to that device.
    assert_eq!(r.token_device(&grant.token_id_hex).await.expect("q"), None);
    let dev = r
        .create_device(alice.id, "laptop", 20)
        .await
        .expect("device");
    r.link_token_device(&grant.token_id_hex, dev.id)
        .await
        .expect("link");
    assert_eq!(
        r.token_device(&grant.token_id_hex).await.expect("q"),
        Some(dev)
    );

    // Cancelling.
    let inv2 = r
        .create_invitation(invite(Invitee::User("alice".into()), 3))
        .await
        .expect("invite");
    assert!(r.cancel_invitation(&inv2.id_hex()).await.expect("cancel"));
    assert!(!r.cancel_invitation(&inv2.id_hex()).await.expect("again"));
    assert!(matches!(
        r.cancel_invitation("not hex").await,
        Err(Error::Invalid { .. })
    ));
    assert!(matches!(
        r.redeem_invitation(&inv2.id, &inv2.secret, redemption("pc", None), 10)
            .await,
        Err(RedeemError::Cancelled)
    ));
    let list = r.list_invitations(10).await.expect("list");
    assert_eq!(list.len(), 2);
    let row = list
        .iter()
        .find(|i| i.id_hex == inv2.id_hex())
        .expect("listed");
    assert!(row.cancelled && !row.expired);
    assert_eq!((row.max_uses, row.uses_left), (3, 3));
}

async fn invitations_for_a_group(env: Env) {
    let r = &env.reg;
    r.ensure_user("boss").await.expect("boss");
    assert!(matches!(
        r.create_invitation(NewInvitation {
            invitee: Invitee::Group("staff".into()),
            created_by: "root".into(),
            expires_at: 1000,
            uses: 2,
        })
        .await,
        Err(Error::NotFound { .. })
    ));
    r.ensure_user("carol").await.expect("carol");
    r.add_to_group("carol", "staff").await.expect("group");
    let inv = r
        .create_invitation(NewInvitation {
            invitee: Invitee::Group("staff".into()),
            created_by: "root".into(),
            expires_at: 1000,
            uses: 2,
        })
        .await
        .expect("invite");

    // A group invitation needs a user name, and not that of a non-member.
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("pc", None), 10)
            .await,
        Err(RedeemError::Db(Error::Invalid { .. }))
    ));
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("pc", Some("boss")), 10)
            .await,
        Err(RedeemError::Db(Error::Conflict(_)))
    ));
    let seq = r.change_seq().await.expect("seq");
    let t1 = r
        .redeem_invitation(&inv.id, &inv.secret, redemption("pc", Some("dave")), 10)
        .await
        .expect("new user");
    assert_eq!(t1.user, "dave");
    assert!(
        r.change_seq().await.expect("seq") > seq,
        "membership changed"
    );
    let dave = r.user_by_name("dave").await.expect("q").expect("dave");
    assert_eq!(r.groups_of(dave.id).await.expect("groups"), ["staff"]);
    let t2 = r
        .redeem_invitation(&inv.id, &inv.secret, redemption("phone", Some("carol")), 11)
        .await
        .expect("an existing member");
    assert_eq!(t2.user, "carol");
    assert!(matches!(
        r.redeem_invitation(&inv.id, &inv.secret, redemption("x", Some("erin")), 12)
            .await,
        Err(RedeemError::UsedUp)
    ));
    assert!(
        r.user_by_name("erin").await.expect("q").is_none(),
        "a refused redemption creates nobody"
    );
}
