//! Password hashing with bcrypt, off the async workers and bounded.
//!
//! bcrypt reads at most 72 bytes and stops at a NUL, so a long password would be silently
//! truncated. authql therefore hashes `base64(SHA-256(password))` (44 ASCII bytes, no NUL)
//! with bcrypt: every byte of a password up to the 256-byte limit counts, and bcrypt's work
//! factor still protects it.
//!
//! Hashes run on a pool of their own (`BCRYPT_MAX_CONCURRENCY` threads, one per core by
//! default) at a lower scheduling priority (nice 10 on Linux): when a login storm and ordinary
//! requests want the same cores, the async workers that answer `me` in microseconds win, and
//! bcrypt takes every cycle they leave, so logins lose little throughput.

use std::sync::{Arc, Mutex, mpsc};

use base64::{Engine, engine::general_purpose::STANDARD};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::error::AppError;

/// The nice value of the hashing threads (Linux: 0 is normal, 19 the lowest priority).
const HASHING_NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run password hashes, at a lower priority than the rest of authql.
struct HashPool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl HashPool {
    fn new(threads: usize) -> Result<Self, AppError> {
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads.max(1) {
            let receiver = receiver.clone();
            std::thread::Builder::new()
                .name(format!("authql-bcrypt-{index}"))
                .spawn(move || {
                    lower_this_threads_priority();
                    loop {
                        let job = match receiver.lock() {
                            Ok(receiver) => receiver.recv(),
                            Err(_) => return,
                        };
                        match job {
                            Ok(job) => job(),
                            Err(_) => return, // the pool was dropped
                        }
                    }
                })
                .map_err(AppError::internal)?;
        }
        Ok(Self {
            jobs: Mutex::new(sender),
        })
    }

    /// Runs `work` on a hashing thread; `operation` names it in the metrics (queue depth while
    /// it waits, its duration on the thread).
    async fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        let (done, result) = oneshot::channel();
        crate::metrics::hash_queue(1.0);
        let job: Job = Box::new(move || {
            crate::metrics::hash_queue(-1.0);
            let started = std::time::Instant::now();
            let outcome = work();
            crate::metrics::hash_duration(operation, started.elapsed().as_secs_f64());
            let _ = done.send(outcome);
        });
        self.jobs
            .lock()
            .map_err(|_| AppError::internal("the hashing pool is poisoned"))?
            .send(job)
            .map_err(AppError::internal)?;
        result.await.map_err(AppError::internal)
    }
}

#[cfg(target_os = "linux")]
fn lower_this_threads_priority() {
    // On Linux, PRIO_PROCESS with who = 0 sets the calling thread's nice value. Failing (a
    // sandbox forbids it) only leaves the thread at normal priority.
    // SAFETY: setpriority takes plain integers and touches no memory of ours.
    let _ = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, HASHING_NICE) };
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

#[derive(Clone)]
pub struct PasswordHasher {
    cost: u32,
    /// bcrypt is CPU-bound: at most as many hashes at once as the pool has threads, so a burst
    /// of logins queues here instead of starving everything else.
    pool: Arc<HashPool>,
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
            pool: Arc::new(HashPool::new(max_concurrent)?),
            dummy_hash: dummy_hash.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let cost = self.cost;
        self.run_blocking("hash", move || bcrypt::hash(prehash(&password), cost))
            .await
    }

    /// Verifies against `hash`, or against the dummy hash when there is no account.
    pub async fn verify(&self, password: String, hash: Option<String>) -> Result<bool, AppError> {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let matches = self
            .run_blocking("verify", move || bcrypt::verify(prehash(&password), &hash))
            .await?;
        Ok(known && matches)
    }

    async fn run_blocking<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> Result<T, bcrypt::BcryptError> + Send + 'static,
    ) -> Result<T, AppError> {
        self.pool
            .run(operation, work)
            .await?
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
