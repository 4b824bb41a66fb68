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
/// of CPU or filling the blocking pool. Registrations (new hashes) may hold
/// half the slots at most, so a registration flood leaves logins (verifies)
/// the other half; logins may use them all.
#[derive(Clone)]
pub struct Passwords {
    slots: Arc<Semaphore>,
    registrations: Arc<Semaphore>,
}

impl Passwords {
    pub fn new(parallelism: usize) -> Self {
        let parallelism = parallelism.max(1);
        Self {
            slots: Arc::new(Semaphore::new(parallelism)),
            registrations: Arc::new(Semaphore::new(parallelism.div_ceil(2))),
        }
    }

    pub async fn hash(&self, password: &Password) -> Result<String, PasswordError> {
        let password = password.clone();
        // Queued here, not among the slots: a login waits behind at most
        // the registrations that hold this share.
        let _share = self
            .registrations
            .acquire()
            .await
            .expect("the semaphore is never closed");
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

    #[tokio::test]
    async fn registrations_leave_logins_their_share() {
        let passwords = Passwords::new(4);
        let password: Password = serde_json::from_str("\"correct horse\"").unwrap();
        let flood: Vec<_> = (0..16)
            .map(|_| {
                let (passwords, password) = (passwords.clone(), password.clone());
                tokio::spawn(async move { passwords.hash(&password).await })
            })
            .collect();
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while passwords.registrations.available_permits() > 0
                || passwords.slots.available_permits() > 2
            {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the registrations take their share of the slots");
        for _ in 0..100 {
            tokio::task::yield_now().await;
            assert!(
                passwords.slots.available_permits() >= 2,
                "half the slots stay free for logins during a registration flood"
            );
        }
        for hash in flood {
            hash.await.unwrap().unwrap();
        }
    }
}
