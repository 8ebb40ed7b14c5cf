//! Password hashing with bcrypt, off the async workers and bounded.
//!
//! bcrypt reads at most 72 bytes and stops at a NUL, so a long password would be silently
//! truncated. authql therefore hashes `base64(SHA-256(password))` (44 ASCII bytes, no NUL)
//! with bcrypt: every byte of a password up to the 256-byte limit counts, and bcrypt's work
//! factor still protects it.

use std::sync::Arc;

use base64::{Engine, engine::general_purpose::STANDARD};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::error::AppError;

#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// bcrypt is CPU-bound: at most this many hashes at once, so a burst of logins queues here
    /// instead of filling the blocking pool and starving everything else.
    permits: Arc<Semaphore>,
    /// Checked when the account does not exist, so that an unknown login costs as much as a
    /// wrong password and the two cannot be told apart by timing.
    dummy_hash: Arc<str>,
}

impl PasswordHasher {
    pub fn new(cost: u32, max_concurrent: usize) -> Result<Self, AppError> {
        // Any well-formed hash of the configured cost does: a cheap cost-4 hash with the cost
        // field rewritten costs nothing at start-up and the full price when verified.
        let cheap = bcrypt::hash(b"authql dummy password", 4).map_err(AppError::internal)?;
        let dummy_hash = format!("$2b${cost:02}{}", &cheap["$2b$04".len()..]);
        Ok(Self {
            cost,
            permits: Arc::new(Semaphore::new(max_concurrent.max(1))),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let cost = self.cost;
        self.run_blocking(move || bcrypt::hash(prehash(&password), cost))
            .await
    }

    /// Verifies against `hash`, or against the dummy hash when there is no account.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AppError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .run_blocking(move || bcrypt::verify(prehash(&password), &hash))
            .await?;
        Ok(known && matches)
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, AppError> {
        let _permit = self.permits.acquire().await.map_err(AppError::internal)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(AppError::internal)?
            .map_err(AppError::internal)
    }
}

fn prehash(password: &str) -> String {
    STANDARD.encode(Sha256::digest(password.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_byte_of_a_long_password_counts() {
        let hasher = PasswordHasher::new(4, 2).unwrap();
        let password = "p".repeat(100);
        let hash = hasher.hash(password.clone()).await.unwrap();
        assert!(
            hasher
                .verify(password.clone(), Some(hash.clone()))
                .await
                .unwrap()
        );
        let mut last_byte_changed = password.clone();
        last_byte_changed.replace_range(99.., "q");
        assert!(!hasher.verify(last_byte_changed, Some(hash)).await.unwrap());
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify_and_pay_full_cost() {
        let hasher = PasswordHasher::new(6, 1).unwrap();
        assert!(hasher.dummy_hash.starts_with("$2b$06$"));
        assert!(!hasher.verify("anything".into(), None).await.unwrap());
    }
}
