//! Users and groups, and group membership.

use std::collections::HashMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use crate::changes::bump;
use crate::{Error, Registry, Result, validate};
use shimgate_host::clock;

/// A user.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct User {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
}

/// A user with the names of its groups (sorted).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRow {
    pub user: User,
    pub groups: Vec<String>,
}

fn user_from_row(row: &AnyRow) -> Result<User> {
    Ok(User {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
    })
}

impl Registry {
    /// Returns the user called `name`, creating it if missing.
    pub async fn ensure_user(&self, name: &str) -> Result<User> {
        validate::name("user name", name)?;
        sqlx::query(
            "INSERT INTO users (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(clock::now())
        .execute(&self.pool)
        .await?;
        self.user_by_name(name)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("user {name} vanished after insert")))
    }

    /// The user called `name`, if any.
    pub async fn user_by_name(&self, name: &str) -> Result<Option<User>> {
        let row = sqlx::query("SELECT id, name, created_at FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    /// Every user with its groups, sorted by name.
    pub async fn list_users(&self) -> Result<Vec<UserRow>> {
        let rows = sqlx::query("SELECT id, name, created_at FROM users")
            .fetch_all(&self.pool)
            .await?;
        let mut groups = self.all_memberships().await?;
        let mut users = rows
            .iter()
            .map(|row| {
                let user = user_from_row(row)?;
                let groups = groups.remove(&user.id).unwrap_or_default();
                Ok(UserRow { user, groups })
            })
            .collect::<Result<Vec<_>>>()?;
        users.sort_by(|a, b| a.user.name.cmp(&b.user.name));
        Ok(users)
    }

    /// Puts `user` in `group`, creating the group if missing. Adding an existing member is a
    /// no-op (and does not bump the change sequence). Fails with `NotFound` if the user does
    /// not exist.
    pub async fn add_to_group(&self, user: &str, group: &str) -> Result<()> {
        validate::name("group name", group)?;
        let now = clock::now();
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let user_id: i64 = sqlx::query_scalar("SELECT id FROM users WHERE name = $1")
            .bind(user)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| Error::not_found("user", user))?;
        sqlx::query(
            "INSERT INTO user_groups (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(group)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let added = sqlx::query(
            "INSERT INTO group_members (group_id, user_id, created_at) \
             SELECT id, $2, $3 FROM user_groups WHERE name = $1 \
             ON CONFLICT (group_id, user_id) DO NOTHING",
        )
        .bind(group)
        .bind(user_id)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if added == 0 {
            // Already a member: nothing changed, so leave the change sequence alone.
            tx.rollback().await?;
        } else {
            tx.commit().await?;
        }
        Ok(())
    }

    /// Takes `user` out of `group`. Returns whether the user was a member.
    pub async fn remove_from_group(&self, user: &str, group: &str) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        bump(&mut tx).await?;
        let removed = sqlx::query(
            "DELETE FROM group_members \
             WHERE user_id = (SELECT id FROM users WHERE name = $1) \
               AND group_id = (SELECT id FROM user_groups WHERE name = $2)",
        )
        .bind(user)
        .bind(group)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if removed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        tx.commit().await?;
        Ok(true)
    }

    /// The names of the groups `user_id` belongs to, sorted.
    pub async fn groups_of(&self, user_id: i64) -> Result<Vec<String>> {
        let mut names: Vec<String> = sqlx::query_scalar(
            "SELECT g.name FROM group_members m JOIN user_groups g ON g.id = m.group_id \
             WHERE m.user_id = $1",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        // Sorted here, not in SQL, so both backends agree whatever their collation.
        names.sort();
        Ok(names)
    }

    /// Every user id with its group names (sorted).
    pub(crate) async fn all_memberships(&self) -> Result<HashMap<i64, Vec<String>>> {
        let rows = sqlx::query(
            "SELECT m.user_id, g.name FROM group_members m JOIN user_groups g ON g.id = m.group_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut map: HashMap<i64, Vec<String>> = HashMap::new();
        for row in &rows {
            let user_id: i64 = row.try_get("user_id")?;
            let name: String = row.try_get("name")?;
            map.entry(user_id).or_default().push(name);
        }
        map.values_mut().for_each(|names| names.sort());
        Ok(map)
    }
}
