use tokio_postgres::Row;

use super::{Store, StoreError, user_id_from_row};
use crate::domain::{NewUser, User, UserId, UserSearch};

/// The most rows `/user/search` answers.
const SEARCH_LIMIT: i64 = 100;

impl Store {
    pub async fn create_user(
        &self,
        user: &NewUser,
        password_hash: &str,
    ) -> Result<UserId, StoreError> {
        let id = UserId::new_v7();
        self.execute(
            "INSERT INTO users (id, first_name, second_name, birthdate, biography, city, password_hash) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[
                id.as_uuid(),
                &user.first_name.as_str(),
                &user.second_name.as_str(),
                &user.birthdate.date(),
                &user.biography.as_str(),
                &user.city.as_str(),
                &password_hash,
            ],
        )
        .await?;
        Ok(id)
    }

    pub async fn user(&self, id: UserId) -> Result<User, StoreError> {
        self.fetch_opt(
            "SELECT id, first_name, second_name, birthdate, biography, city FROM users WHERE id = $1",
            &[id.as_uuid()],
            user_from_row,
        )
        .await?
        .ok_or(StoreError::NotFound("user"))
    }

    /// The stored password hash of `id`, for checking a login.
    pub async fn password_hash(&self, id: UserId) -> Result<String, StoreError> {
        self.fetch_opt(
            "SELECT password_hash FROM users WHERE id = $1",
            &[id.as_uuid()],
            |row| row.get(0),
        )
        .await?
        .ok_or(StoreError::NotFound("user"))
    }

    /// Users whose names start with both prefixes, ordered by id.
    pub async fn search_users(&self, search: &UserSearch) -> Result<Vec<User>, StoreError> {
        self.fetch_all(
            "SELECT id, first_name, second_name, birthdate, biography, city FROM users \
             WHERE first_name LIKE $1 AND second_name LIKE $2 \
             ORDER BY id LIMIT $3",
            &[
                &prefix_pattern(search.first_name.as_str()),
                &prefix_pattern(search.last_name.as_str()),
                &SEARCH_LIMIT,
            ],
            user_from_row,
        )
        .await
    }

    /// User ids, those who follow the most others first; `limit` of them,
    /// or all.
    pub async fn users_by_follows(&self, limit: Option<i64>) -> Result<Vec<UserId>, StoreError> {
        self.fetch_all(
            "SELECT u.id FROM users u \
             LEFT JOIN (SELECT user_id, count(*) AS follows FROM friends GROUP BY user_id) f \
               ON f.user_id = u.id \
             ORDER BY f.follows DESC NULLS LAST, u.id LIMIT $1",
            &[&limit],
            user_id_from_row,
        )
        .await
    }
}

fn user_from_row(row: &Row) -> User {
    User {
        id: UserId::from_uuid(row.get(0)),
        first_name: row.get(1),
        second_name: row.get(2),
        birthdate: row.get(3),
        biography: row.get(4),
        city: row.get(5),
    }
}

/// `LIKE` pattern matching strings that start with `prefix` literally.
fn prefix_pattern(prefix: &str) -> String {
    let mut pattern = String::with_capacity(prefix.len() + 1);
    for c in prefix.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

#[cfg(test)]
mod tests {
    use super::prefix_pattern;

    #[test]
    fn prefix_pattern_escapes_wildcards() {
        assert_eq!(prefix_pattern("Конст"), "Конст%");
        assert_eq!(prefix_pattern("a%b_c\\"), "a\\%b\\_c\\\\%");
        assert_eq!(prefix_pattern(""), "%");
    }
}
