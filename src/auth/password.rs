//! Password hashing with bcrypt, off the async workers, bounded, and with one form per password.
//!
//! **One form per password** (RFC 8265 § 4.2, the `OpaqueString` profile; NIST SP 800-63B
//! § 5.1.1.2): before hashing, non-ASCII spaces become U+0020 and the text is put in Unicode
//! NFC, so that a password set on one device (NFC) is the same password typed on another (NFD);
//! control characters and unassigned code points are refused when a password is set.
//!
//! **Every byte counts**: bcrypt reads at most 72 bytes and stops at a NUL, so a long password
//! would be silently truncated. authql therefore hashes `base64(SHA-256(password))` (44 ASCII
//! bytes, no NUL) with bcrypt: every byte of a password up to the 256-byte limit counts, and
//! bcrypt's work factor still protects it.
//!
//! **Stored forms**: `precis$<bcrypt hash>` is the current one (of the prepared password).
//! A bare `<bcrypt hash>` is what authql stored before: of the password as typed. Both verify;
//! a match against the older form, or against a hash of another cost than `BCRYPT_COST`, is
//! reported as outdated ([`Verification::Outdated`]) so that the caller stores a new hash
//! (kanidm's `PwUpgrade`): the dummy hash that unknown accounts are checked against then costs
//! what real ones do.
//!
//! **Bounded**: hashes run on a pool of their own (`BCRYPT_MAX_CONCURRENCY` threads, one per
//! core by default) at a lower scheduling priority (nice 10 on Linux), so that a login storm
//! leaves the async workers that answer `me` in microseconds their cores. At most
//! `BCRYPT_MAX_QUEUE` hashes wait for a thread; one more is refused at once
//! (`SERVICE_UNAVAILABLE` with `Retry-After`), and a waiting hash whose requester has gone (the
//! request timed out, the client left) leaves the queue at once and is never run.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
    mpsc,
};

use base64::{Engine, engine::general_purpose::STANDARD};
use precis_profiles::{OpaqueString, precis_core::profile::PrecisFastInvocation};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::error::AppError;

/// The nice value of the hashing threads (Linux: 0 is normal, 19 the lowest priority).
const HASHING_NICE: i32 = 10;
/// What a stored hash of the current form starts with.
const CURRENT_FORM: &str = "precis$";
/// What a client refused because the queue is full is told to wait, in seconds.
const RETRY_AFTER_SECONDS: u64 = 1;

type Job = Box<dyn FnOnce() + Send>;

/// Threads that run password hashes, at a lower priority than the rest of authql. A hash waits
/// for a free thread in a fair queue of at most `max_waiting` requests (tokio's semaphore, which
/// forgets a waiter the moment its request is dropped), so that the queue holds only requests
/// someone still waits for.
struct HashPool {
    jobs: Mutex<mpsc::Sender<Job>>,
    /// One permit per thread: a job is handed to the threads only with one.
    threads: Arc<tokio::sync::Semaphore>,
    waiting: Arc<AtomicUsize>,
    max_waiting: usize,
}

/// Counts one request waiting for a thread while it lives.
struct Waiting(Arc<AtomicUsize>);

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        crate::metrics::hash_queue(-1.0);
    }
}

impl HashPool {
    fn new(threads: usize, max_waiting: usize) -> Result<Self, AppError> {
        let threads = threads.max(1);
        let (sender, receiver) = mpsc::channel::<Job>();
        let receiver = Arc::new(Mutex::new(receiver));
        for index in 0..threads {
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
            threads: Arc::new(tokio::sync::Semaphore::new(threads)),
            waiting: Arc::default(),
            max_waiting,
        })
    }

    /// Runs `work` on a hashing thread; `operation` names it in the metrics (queue depth while
    /// it waits, its duration on the thread). Errors: `Overloaded` when `max_waiting` requests
    /// already wait for a thread.
    async fn run<T: Send + 'static>(
        &self,
        operation: &'static str,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, AppError> {
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.max_waiting {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(
                event = "password_hash_queue_full",
                "a password hash was refused: the queue is full"
            );
            return Err(AppError::Overloaded {
                retry_after_seconds: RETRY_AFTER_SECONDS,
            });
        }
        crate::metrics::hash_queue(1.0);
        let waiting = Waiting(self.waiting.clone());
        // Dropping this request while it waits here leaves the queue at once.
        let thread = self
            .threads
            .clone()
            .acquire_owned()
            .await
            .map_err(AppError::internal)?;
        drop(waiting);
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _thread = thread;
            // The request went away since: the work would be for nothing.
            if done.is_closed() {
                return;
            }
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

/// What checking a password against a stored hash found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    /// Not the password (or no account).
    Mismatch,
    /// The password, with a hash of the current form and cost.
    Match,
    /// The password, but its hash is of an older form or another cost: store this new one.
    Outdated { new_hash: String },
}

impl Verification {
    /// Whether the password was the account's (`Match` or `Outdated`).
    pub fn matches(&self) -> bool {
        !matches!(self, Self::Mismatch)
    }
}

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
    /// `threads` hashes at once, at most `queue` waiting.
    pub fn new(cost: u32, threads: usize, queue: usize) -> Result<Self, AppError> {
        // Any well-formed hash of the configured cost does: a cheap cost-4 hash with the cost
        // field rewritten costs nothing at start-up and the full price when verified.
        let cheap = bcrypt::hash(b"authql dummy password", 4).map_err(AppError::internal)?;
        let dummy_hash = format!("{CURRENT_FORM}$2b${cost:02}{}", &cheap["$2b$04".len()..]);
        Ok(Self {
            cost,
            pool: Arc::new(HashPool::new(threads, queue.max(1))?),
            dummy_hash: dummy_hash.into(),
        })
    }

    /// The stored form of a new password. The password must have passed the policy
    /// (`service::input::password`), which refuses what OpaqueString cannot prepare.
    /// Errors: `Overloaded` (the queue is full), `Internal`.
    pub async fn hash(&self, password: String) -> Result<String, AppError> {
        let cost = self.cost;
        self.run_blocking("hash", move || {
            let prepared = prepare(&password).ok_or(bcrypt::BcryptError::InvalidHash(
                "a password OpaqueString refuses",
            ))?;
            Ok(format!(
                "{CURRENT_FORM}{}",
                bcrypt::hash(prehash(&prepared), cost)?
            ))
        })
        .await
    }

    /// Checks `password` against `stored`, or against the dummy hash when there is no account
    /// or it has no password (at the same cost). An outdated match comes with the new hash to store, made on the same
    /// hashing thread. Errors: `Overloaded` (the queue is full), `Internal`.
    pub async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<Verification, AppError> {
        // An account without a password (`NO_PASSWORD`) is checked as an unknown one is.
        let stored = stored.filter(|hash| hash != crate::store::NO_PASSWORD);
        let known = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy_hash.to_string());
        let cost = self.cost;
        let verification = self
            .run_blocking("verify", move || verify_blocking(&password, &stored, cost))
            .await?;
        Ok(if known {
            verification
        } else {
            Verification::Mismatch
        })
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

/// On a hashing thread: the verification, and the new hash when it is outdated.
fn verify_blocking(
    password: &str,
    stored: &str,
    cost: u32,
) -> Result<Verification, bcrypt::BcryptError> {
    let prepared = prepare(password);
    let matched = match stored.strip_prefix(CURRENT_FORM) {
        Some(hash) => {
            // A password OpaqueString refuses was never set: it cannot match, but costs as much.
            let candidate = prepared.as_deref().unwrap_or(password);
            bcrypt::verify(prehash(candidate), hash)? && prepared.is_some()
        }
        // The older form: of the password as typed. A password typed in another form than it
        // was set in (NFD for NFC) is tried prepared too, which costs a second hash only then.
        None => {
            bcrypt::verify(prehash(password), stored)?
                || match prepared.as_deref() {
                    Some(prepared) if prepared != password => {
                        bcrypt::verify(prehash(prepared), stored)?
                    }
                    _ => false,
                }
        }
    };
    if !matched {
        return Ok(Verification::Mismatch);
    }
    let current_cost = stored
        .strip_prefix(CURRENT_FORM)
        .and_then(|hash| hash.split('$').nth(2))
        .and_then(|cost| cost.parse::<u32>().ok());
    match (current_cost, prepared) {
        (Some(stored_cost), _) if stored_cost == cost => Ok(Verification::Match),
        (_, Some(prepared)) => Ok(Verification::Outdated {
            new_hash: format!("{CURRENT_FORM}{}", bcrypt::hash(prehash(&prepared), cost)?),
        }),
        // Matched as typed but cannot be prepared: keep the hash it has.
        (_, None) => Ok(Verification::Match),
    }
}

/// The password as RFC 8265 OpaqueString prepares and enforces it; `None` for one it refuses
/// (control characters, unassigned code points, empty).
pub fn prepare(password: &str) -> Option<String> {
    OpaqueString::enforce(password)
        .ok()
        .map(std::borrow::Cow::into_owned)
}

fn prehash(password: &str) -> String {
    STANDARD.encode(Sha256::digest(password.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_byte_of_a_long_password_counts() {
        let hasher = PasswordHasher::new(4, 2, 8).unwrap();
        let password = "p".repeat(100);
        let hash = hasher.hash(password.clone()).await.unwrap();
        assert_eq!(
            hasher
                .verify(password.clone(), Some(hash.clone()))
                .await
                .unwrap(),
            Verification::Match
        );
        let mut last_byte_changed = password.clone();
        last_byte_changed.replace_range(99.., "q");
        assert_eq!(
            hasher.verify(last_byte_changed, Some(hash)).await.unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn unknown_accounts_never_verify_and_pay_full_cost() {
        let hasher = PasswordHasher::new(6, 1, 8).unwrap();
        assert!(hasher.dummy_hash.starts_with("precis$$2b$06$"));
        assert_eq!(
            hasher.verify("anything".into(), None).await.unwrap(),
            Verification::Mismatch
        );
    }

    #[tokio::test]
    async fn a_password_set_in_nfc_is_the_same_typed_in_nfd() {
        let hasher = PasswordHasher::new(4, 1, 8).unwrap();
        let nfc = "caf\u{e9} au lait\u{a0}2x";
        let nfd = "cafe\u{301} au lait 2x";
        let hash = hasher.hash(nfc.into()).await.unwrap();
        assert_eq!(
            hasher.verify(nfd.into(), Some(hash)).await.unwrap(),
            Verification::Match
        );
    }

    #[tokio::test]
    async fn older_hashes_verify_and_come_back_in_the_current_form() {
        let hasher = PasswordHasher::new(4, 1, 8).unwrap();
        let nfc = "caf\u{e9} au lait";
        // What authql stored before: bcrypt of the password as typed.
        let legacy = bcrypt::hash(prehash(nfc), 4).unwrap();
        let Verification::Outdated { new_hash } = hasher
            .verify("cafe\u{301} au lait".into(), Some(legacy.clone()))
            .await
            .unwrap()
        else {
            panic!("an outdated match")
        };
        assert!(new_hash.starts_with("precis$$2b$04$"));
        assert_eq!(
            hasher.verify(nfc.into(), Some(new_hash)).await.unwrap(),
            Verification::Match
        );
        assert_eq!(
            hasher.verify("wrong".into(), Some(legacy)).await.unwrap(),
            Verification::Mismatch
        );
        // Another cost is outdated too.
        let cheaper = PasswordHasher::new(5, 1, 8).unwrap();
        let hash = hasher.hash(nfc.into()).await.unwrap();
        assert!(matches!(
            cheaper.verify(nfc.into(), Some(hash)).await.unwrap(),
            Verification::Outdated { new_hash } if new_hash.starts_with("precis$$2b$05$")
        ));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_abandoned_jobs_are_dropped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let pool = Arc::new(HashPool::new(1, 2).unwrap());
        let ran = Arc::new(AtomicUsize::new(0));
        // The one thread is held by a job until `release` is sent.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let blocker = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.run("test", move || held.recv().is_ok()).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // Two wait in the queue; a third is refused at once.
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let (pool, ran) = (pool.clone(), ran.clone());
                tokio::spawn(async move {
                    pool.run("test", move || ran.fetch_add(1, Ordering::SeqCst))
                        .await
                })
            })
            .collect();
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let refused = pool.run("test", || ()).await;
        assert_eq!(
            refused,
            Err(AppError::Overloaded {
                retry_after_seconds: RETRY_AFTER_SECONDS
            })
        );
        // Their requesters leave: the queue has room again at once, before the thread is free.
        for task in &waiting {
            task.abort();
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let next = {
            let (pool, ran) = (pool.clone(), ran.clone());
            tokio::spawn(async move {
                pool.run("test", move || ran.fetch_add(100, Ordering::SeqCst))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        release.send(()).unwrap();
        assert_eq!(blocker.await.unwrap(), Ok(true));
        next.await.unwrap().unwrap();
        assert_eq!(
            ran.load(Ordering::SeqCst),
            100,
            "the abandoned jobs never ran"
        );
    }
}
