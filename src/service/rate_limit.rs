//! Token buckets for the operations worth guessing at: `login`, `register`, `refresh` and
//! `changePassword`. Every call of one of them takes a token, so aliases (and batches, which the
//! edge refuses anyway) cannot multiply attempts.
//!
//! Two buckets per call: one per client IP and operation, and one per account *and* IP. Keying
//! the account bucket by IP too means an attacker who burns a victim's attempts from one address
//! does not lock the victim out from another. Buckets live in this process: with several
//! instances each keeps its own.

use std::{
    hash::Hash,
    net::IpAddr,
    num::NonZeroU32,
    sync::atomic::{AtomicU64, Ordering},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::error::AppError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Login,
    Register,
    Refresh,
    ChangePassword,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
            Self::ChangePassword => "changePassword",
        }
    }
}

/// Attempts allowed per minute; `None` switches a bucket off.
#[derive(Debug, Clone, Copy, Default)]
pub struct RateLimitSettings {
    pub per_ip_per_minute: Option<NonZeroU32>,
    pub per_account_per_minute: Option<NonZeroU32>,
}

pub struct RateLimits {
    per_ip: Option<DefaultKeyedRateLimiter<(Operation, IpAddr)>>,
    /// The account is its normalized login name, user id or session id.
    per_account: Option<DefaultKeyedRateLimiter<(Operation, String, Option<IpAddr>)>>,
    checks: AtomicU64,
}

/// Forgetting idle buckets every this many checks keeps memory bounded without a timer task.
const CHECKS_BETWEEN_CLEANUPS: u64 = 4096;

impl RateLimits {
    pub fn new(settings: RateLimitSettings) -> Self {
        Self {
            per_ip: settings
                .per_ip_per_minute
                .map(|rate| RateLimiter::keyed(Quota::per_minute(rate))),
            per_account: settings
                .per_account_per_minute
                .map(|rate| RateLimiter::keyed(Quota::per_minute(rate))),
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token from the client address's bucket for this operation.
    pub fn check_client(&self, operation: Operation, ip: Option<IpAddr>) -> Result<(), AppError> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CHECKS_BETWEEN_CLEANUPS)
        {
            self.forget_idle_buckets();
        }
        match (&self.per_ip, ip) {
            (Some(limiter), Some(ip)) => take(limiter, &(operation, ip), operation, "ip"),
            _ => Ok(()),
        }
    }

    /// Takes a token from the bucket of this account as used from this address.
    pub fn check_account(
        &self,
        operation: Operation,
        account: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), AppError> {
        match &self.per_account {
            Some(limiter) => take(
                limiter,
                &(operation, account.to_owned(), ip),
                operation,
                "account",
            ),
            None => Ok(()),
        }
    }

    fn forget_idle_buckets(&self) {
        if let Some(limiter) = &self.per_ip {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some(limiter) = &self.per_account {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }
}

fn take<K: Hash + Eq + Clone>(
    limiter: &DefaultKeyedRateLimiter<K>,
    key: &K,
    operation: Operation,
    scope: &'static str,
) -> Result<(), AppError> {
    limiter.check_key(key).map_err(|not_until| {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        let retry_after_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        tracing::warn!(
            event = "rate_limited",
            operation = operation.name(),
            scope,
            retry_after_seconds,
            "too many attempts"
        );
        AppError::RateLimited {
            retry_after_seconds: retry_after_seconds.max(1),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, per_account: u32) -> RateLimits {
        RateLimits::new(RateLimitSettings {
            per_ip_per_minute: NonZeroU32::new(per_ip),
            per_account_per_minute: NonZeroU32::new(per_account),
        })
    }

    #[test]
    fn an_empty_bucket_says_when_to_retry() {
        let limits = limits(2, 100);
        let ip = Some("1.2.3.4".parse().unwrap());
        assert!(limits.check_client(Operation::Login, ip).is_ok());
        assert!(limits.check_client(Operation::Login, ip).is_ok());
        match limits.check_client(Operation::Login, ip) {
            Err(AppError::RateLimited {
                retry_after_seconds,
            }) => {
                assert!((1..=60).contains(&retry_after_seconds))
            }
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        // Other operations and other addresses have their own buckets.
        assert!(limits.check_client(Operation::Register, ip).is_ok());
        assert!(
            limits
                .check_client(Operation::Login, Some("5.6.7.8".parse().unwrap()))
                .is_ok()
        );
    }

    #[test]
    fn an_account_bucket_is_per_address() {
        let limits = limits(100, 1);
        let attacker = Some("6.6.6.6".parse().unwrap());
        let victim = Some("1.1.1.1".parse().unwrap());
        assert!(
            limits
                .check_account(Operation::Login, "bob", attacker)
                .is_ok()
        );
        assert!(
            limits
                .check_account(Operation::Login, "bob", attacker)
                .is_err()
        );
        assert!(
            limits
                .check_account(Operation::Login, "bob", victim)
                .is_ok()
        );
    }

    #[test]
    fn switched_off_buckets_never_refuse() {
        let limits = limits(0, 0);
        let ip = Some("1.2.3.4".parse().unwrap());
        for _ in 0..1000 {
            assert!(limits.check_client(Operation::Login, ip).is_ok());
            assert!(limits.check_account(Operation::Login, "a", ip).is_ok());
        }
    }
}
