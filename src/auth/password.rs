use std::sync::Arc;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

use crate::domain::Password;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("stored password hash is unreadable: {0}")]
    BadHash(String),
    #[error("hashing failed: {0}")]
    Hashing(String),
    #[error("hashing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Argon2id hashing off the async workers. Each hash costs tens of
/// milliseconds of CPU and 19 MiB of memory, so at most one per core runs at
/// a time: a login burst queues here instead of starving the other requests
/// of CPU or filling the blocking pool.
#[derive(Clone)]
pub struct Passwords {
    slots: Arc<Semaphore>,
}

impl Passwords {
    pub fn new(parallelism: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(parallelism.max(1))),
        }
    }

    pub async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        let password = password.clone();
        self.run(move || {
            Argon2::default()
                .hash_password(password.expose().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| PasswordError::Hashing(e.to_string()))
        })
        .await
    }

    pub async fn verify(&self, password: &Password, hash: String) -> Result<bool, PasswordError> {
        let password = password.clone();
        self.run(move || {
            let parsed =
                PasswordHash::new(&hash).map_err(|e| PasswordError::BadHash(e.to_string()))?;
            Ok(Argon2::default()
                .verify_password(password.expose().as_bytes(), &parsed)
                .is_ok())
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _slot = self
            .slots
            .acquire()
            .await
            .expect("the semaphore is never closed");
        tokio::task::spawn_blocking(work).await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_only_the_right_password() {
        let passwords = Passwords::new(2);
        let right: Password = serde_json::from_str("\"correct horse\"").unwrap();
        let wrong: Password = serde_json::from_str("\"battery staple\"").unwrap();
        let hash = passwords.hash(&right).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(passwords.verify(&right, hash.clone()).await.unwrap());
        assert!(!passwords.verify(&wrong, hash).await.unwrap());
    }
}
