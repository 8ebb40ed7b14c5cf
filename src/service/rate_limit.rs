//! Token buckets for the operations worth guessing at or abusing: `login`, `register`,
//! `refresh`, `changePassword`, `deleteAccount` and the account-recovery mutations. Every call
//! of one of them takes a token, so aliases (and batches, which the edge refuses anyway) cannot
//! multiply attempts.
//!
//! Two buckets per call: one per client address and operation, and one per account *and*
//! address. Keying the account bucket by address too means an attacker who burns a victim's
//! attempts from one address does not lock the victim out from another.
//!
//! Every mail takes two more: one per recipient address (whoever asks: nobody can flood an
//! inbox, `RATE_LIMIT_MAILS_PER_ADDRESS_PER_HOUR`) and one per client address
//! (`RATE_LIMIT_MAILS_PER_IP_PER_HOUR`: nobody can mail many inboxes).
//!
//! An IPv6 client is keyed by its `/RATE_LIMIT_IPV6_PREFIX` network (64 by default): one host
//! is routinely given a whole /64 and can rotate through it freely (OWASP Credential Stuffing
//! Prevention; RFC 6177). Sessions still record the full address.
//!
//! Where the buckets live ([`BucketStore`]): in this process on SQLite, which one process serves;
//! in the database on PostgreSQL, so that N instances allow the limit once, not N times.

use std::{
    net::IpAddr,
    num::NonZeroU32,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_trait::async_trait;
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};
use ipnet::Ipv6Net;

use crate::{error::AppError, store::RateLimitStore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    Login,
    Register,
    Refresh,
    ChangePassword,
    DeleteAccount,
    RequestPasswordReset,
    ResetPassword,
    SendVerificationEmail,
    VerifyEmail,
    RequestEmailChange,
    /// A TOTP or recovery code checked, whatever operation carries it.
    SecondFactor,
    /// `/auth/verify` asked about a token that is not authql's at all (malformed, or signed by
    /// no key of ours): expired and revoked tokens, which clients send in the normal course,
    /// are not counted.
    ForwardAuth,
    /// `/oauth/introspect` called with client credentials that are wrong.
    Introspection,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
            Self::ChangePassword => "changePassword",
            Self::DeleteAccount => "deleteAccount",
            Self::RequestPasswordReset => "requestPasswordReset",
            Self::ResetPassword => "resetPassword",
            Self::SendVerificationEmail => "sendVerificationEmail",
            Self::VerifyEmail => "verifyEmail",
            Self::RequestEmailChange => "requestEmailChange",
            Self::SecondFactor => "secondFactor",
            Self::ForwardAuth => "forwardAuth",
            Self::Introspection => "introspection",
        }
    }
}

/// A bucket's size and refill: room for `burst` at once, all of it back over `period` (one
/// token every `period / burst`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub burst: NonZeroU32,
    pub period: Duration,
}

impl Rate {
    pub fn per_minute(burst: NonZeroU32) -> Self {
        Self {
            burst,
            period: Duration::from_secs(60),
        }
    }

    pub fn per_hour(burst: NonZeroU32) -> Self {
        Self {
            burst,
            period: Duration::from_secs(3600),
        }
    }

    /// How long one token takes to come back.
    pub fn interval(self) -> Duration {
        self.period / self.burst.get()
    }
}

/// Attempts allowed per minute, mails per hour; `None` switches a bucket off.
#[derive(Debug, Clone, Copy)]
pub struct RateLimitSettings {
    pub per_ip_per_minute: Option<NonZeroU32>,
    pub per_account_per_minute: Option<NonZeroU32>,
    /// Mails to one address per hour.
    pub mails_per_recipient_per_hour: Option<NonZeroU32>,
    /// Mails caused by one client address per hour.
    pub mails_per_ip_per_hour: Option<NonZeroU32>,
    /// IPv6 clients share a bucket per network of this prefix length (0 to 128).
    pub ipv6_prefix: u8,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            per_ip_per_minute: None,
            per_account_per_minute: None,
            mails_per_recipient_per_hour: None,
            mails_per_ip_per_hour: None,
            ipv6_prefix: 64,
        }
    }
}

impl RateLimitSettings {
    /// The rate of a scope's buckets; `None` when switched off.
    fn rate(&self, scope: Scope) -> Option<Rate> {
        match scope {
            Scope::Address => self.per_ip_per_minute.map(Rate::per_minute),
            Scope::Account => self.per_account_per_minute.map(Rate::per_minute),
            Scope::Recipient => self.mails_per_recipient_per_hour.map(Rate::per_hour),
            Scope::MailSender => self.mails_per_ip_per_hour.map(Rate::per_hour),
            // As many codes an hour as passwords a minute: a 6-digit code is far easier to
            // guess than a password (RFC 6238 § 5.2 asks for throttling).
            Scope::SecondFactor => self.per_account_per_minute.map(Rate::per_hour),
        }
    }
}

/// Which kind of bucket a check takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One client address's attempts at an operation.
    Address,
    /// One account's, from one client address.
    Account,
    /// Mails to one address.
    Recipient,
    /// Mails caused by one client address.
    MailSender,
    /// One account's second-factor codes, from every address together.
    SecondFactor,
}

impl Scope {
    /// The `scope` label of `authql_rate_limited_total`.
    fn label(self) -> &'static str {
        match self {
            Self::Address => "ip",
            Self::Account => "account",
            Self::Recipient => "recipient",
            Self::MailSender => "mail_ip",
            Self::SecondFactor => "second_factor",
        }
    }
}

/// Where buckets are kept. `take` takes one token at `rate` from the bucket `key`; it answers
/// how long until a token will be there when there is none now.
#[async_trait]
pub trait BucketStore: Send + Sync {
    async fn take(&self, scope: Scope, rate: Rate, key: &str)
    -> Result<Option<Duration>, AppError>;

    /// Forgets buckets that have filled up again; called now and then.
    async fn prune(&self) -> Result<(), AppError>;
}

/// The two buckets of every guessable operation, and where they are kept.
pub struct RateLimits {
    settings: RateLimitSettings,
    buckets: Box<dyn BucketStore>,
    checks: AtomicU64,
}

/// Forgetting idle buckets every this many checks keeps memory bounded without a timer task.
const CHECKS_BETWEEN_CLEANUPS: u64 = 4096;

impl RateLimits {
    /// Buckets in this process.
    pub fn in_memory(settings: RateLimitSettings) -> Self {
        Self::with_buckets(settings, Box::new(MemoryBuckets::new(settings)))
    }

    /// Buckets in the database, shared by every process on it.
    pub fn shared(settings: RateLimitSettings, store: Arc<dyn RateLimitStore>) -> Self {
        Self::with_buckets(settings, Box::new(StoreBuckets(store)))
    }

    fn with_buckets(settings: RateLimitSettings, buckets: Box<dyn BucketStore>) -> Self {
        Self {
            settings,
            buckets,
            checks: AtomicU64::new(0),
        }
    }

    /// Takes a token from the client address's bucket for this operation.
    /// Errors: RATE_LIMITED with the seconds to wait; SERVICE_UNAVAILABLE when shared buckets
    /// cannot be reached.
    pub async fn check_client(
        &self,
        operation: Operation,
        ip: Option<IpAddr>,
    ) -> Result<(), AppError> {
        if self
            .checks
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(CHECKS_BETWEEN_CLEANUPS)
        {
            self.buckets.prune().await?;
        }
        match ip {
            Some(ip) => {
                let key = format!("{}|address|{}", operation.name(), self.address_key(ip));
                self.take(Scope::Address, &key, operation).await
            }
            None => Ok(()),
        }
    }

    /// Takes a token for one mail to `recipient` (its normalised address) caused by `ip`:
    /// first from the client address's mail bucket, then from the recipient's. Errors:
    /// RATE_LIMITED, SERVICE_UNAVAILABLE as [`Self::check_client`].
    pub async fn check_mail(
        &self,
        operation: Operation,
        recipient: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), AppError> {
        if let Some(ip) = ip {
            let key = format!("mail|from|{}", self.address_key(ip));
            self.take(Scope::MailSender, &key, operation).await?;
        }
        let key = format!("mail|to|{recipient}");
        self.take(Scope::Recipient, &key, operation).await
    }

    /// Takes a token from the bucket of this account as used from this address.
    pub async fn check_account(
        &self,
        operation: Operation,
        account: &str,
        ip: Option<IpAddr>,
    ) -> Result<(), AppError> {
        let address = ip.map(|ip| self.address_key(ip)).unwrap_or_default();
        let key = format!("{}|account|{account}|{address}", operation.name());
        self.take(Scope::Account, &key, operation).await
    }

    /// Takes a token from the account's bucket of second-factor codes, shared by every client
    /// address: `RATE_LIMIT_ACCOUNT_PER_MINUTE` codes an hour. Unlike a password's, this bucket
    /// is not split by address: a 6-digit code must not be guessed from many addresses. To
    /// reach it at all takes the password (an `mfaToken`) or a session.
    pub async fn check_second_factor(&self, user_id: &str) -> Result<(), AppError> {
        let key = format!("{}|account|{user_id}", Operation::SecondFactor.name());
        self.take(Scope::SecondFactor, &key, Operation::SecondFactor)
            .await
    }

    /// Forgets buckets that have filled up again.
    pub async fn prune(&self) -> Result<(), AppError> {
        self.buckets.prune().await
    }

    /// The address a bucket is keyed by: IPv4 as it is, IPv6 by its network.
    fn address_key(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V6(v6) => Ipv6Net::new(v6, self.settings.ipv6_prefix.min(128))
                .map(|net| net.trunc().to_string())
                .unwrap_or_else(|_| v6.to_string()),
            v4 => v4.to_string(),
        }
    }

    async fn take(&self, scope: Scope, key: &str, operation: Operation) -> Result<(), AppError> {
        let Some(rate) = self.settings.rate(scope) else {
            return Ok(());
        };
        let Some(wait) = self.buckets.take(scope, rate, key).await? else {
            return Ok(());
        };
        let retry_after_seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        let scope = scope.label();
        crate::metrics::rate_limited(operation.name(), scope);
        tracing::warn!(
            event = "rate_limited",
            operation = operation.name(),
            scope,
            retry_after_seconds,
            "too many attempts"
        );
        Err(AppError::RateLimited {
            retry_after_seconds: retry_after_seconds.max(1),
        })
    }
}

/// Buckets in this process (governor's GCRA), one keyed limiter per scope.
struct MemoryBuckets {
    per_address: Option<DefaultKeyedRateLimiter<String>>,
    per_account: Option<DefaultKeyedRateLimiter<String>>,
    per_recipient: Option<DefaultKeyedRateLimiter<String>>,
    per_mail_sender: Option<DefaultKeyedRateLimiter<String>>,
    per_second_factor: Option<DefaultKeyedRateLimiter<String>>,
}

impl MemoryBuckets {
    fn new(settings: RateLimitSettings) -> Self {
        let limiter = |scope: Scope| {
            settings.rate(scope).and_then(|rate| {
                Quota::with_period(rate.interval())
                    .map(|quota| RateLimiter::keyed(quota.allow_burst(rate.burst)))
            })
        };
        Self {
            per_address: limiter(Scope::Address),
            per_account: limiter(Scope::Account),
            per_recipient: limiter(Scope::Recipient),
            per_mail_sender: limiter(Scope::MailSender),
            per_second_factor: limiter(Scope::SecondFactor),
        }
    }

    fn limiters(&self) -> [&Option<DefaultKeyedRateLimiter<String>>; 5] {
        [
            &self.per_address,
            &self.per_account,
            &self.per_recipient,
            &self.per_mail_sender,
            &self.per_second_factor,
        ]
    }
}

#[async_trait]
impl BucketStore for MemoryBuckets {
    async fn take(
        &self,
        scope: Scope,
        _rate: Rate,
        key: &str,
    ) -> Result<Option<Duration>, AppError> {
        let limiter = match scope {
            Scope::Address => &self.per_address,
            Scope::Account => &self.per_account,
            Scope::Recipient => &self.per_recipient,
            Scope::MailSender => &self.per_mail_sender,
            Scope::SecondFactor => &self.per_second_factor,
        };
        let Some(limiter) = limiter else {
            return Ok(None);
        };
        Ok(limiter
            .check_key(&key.to_owned())
            .err()
            .map(|not_until| not_until.wait_time_from(DefaultClock::default().now())))
    }

    async fn prune(&self) -> Result<(), AppError> {
        for limiter in self.limiters().into_iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        Ok(())
    }
}

/// Buckets in the database: one atomic GCRA statement per check.
struct StoreBuckets(Arc<dyn RateLimitStore>);

#[async_trait]
impl BucketStore for StoreBuckets {
    async fn take(
        &self,
        _scope: Scope,
        rate: Rate,
        key: &str,
    ) -> Result<Option<Duration>, AppError> {
        Ok(self
            .0
            .take_rate_limit_token(key, chrono::Utc::now(), rate.interval(), rate.burst.get())
            .await?)
    }

    async fn prune(&self) -> Result<(), AppError> {
        self.0.prune_rate_limit_buckets(chrono::Utc::now()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_ip: u32, per_account: u32) -> RateLimits {
        RateLimits::in_memory(RateLimitSettings {
            per_ip_per_minute: NonZeroU32::new(per_ip),
            per_account_per_minute: NonZeroU32::new(per_account),
            ..RateLimitSettings::default()
        })
    }

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[tokio::test]
    async fn an_empty_bucket_says_when_to_retry() {
        let limits = limits(2, 100);
        let ip = ip("1.2.3.4");
        assert!(limits.check_client(Operation::Login, ip).await.is_ok());
        assert!(limits.check_client(Operation::Login, ip).await.is_ok());
        match limits.check_client(Operation::Login, ip).await {
            Err(AppError::RateLimited {
                retry_after_seconds,
            }) => {
                assert!((1..=60).contains(&retry_after_seconds))
            }
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        // Other operations and other addresses have their own buckets.
        assert!(limits.check_client(Operation::Register, ip).await.is_ok());
        assert!(
            limits
                .check_client(Operation::Login, Some("5.6.7.8".parse().unwrap()))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_account_bucket_is_per_address() {
        let limits = limits(100, 1);
        let (attacker, victim) = (ip("6.6.6.6"), ip("1.1.1.1"));
        let check = |who| limits.check_account(Operation::Login, "bob", who);
        assert!(check(attacker).await.is_ok());
        assert!(check(attacker).await.is_err());
        assert!(check(victim).await.is_ok());
    }

    #[tokio::test]
    async fn an_ipv6_network_is_one_client() {
        let limits = limits(2, 100);
        for host in ["2001:db8:1:2::1", "2001:db8:1:2::2"] {
            assert!(
                limits
                    .check_client(Operation::Login, ip(host))
                    .await
                    .is_ok()
            );
        }
        let same_64 = ip("2001:db8:1:2:ffff::9");
        assert!(
            limits
                .check_client(Operation::Login, same_64)
                .await
                .is_err()
        );
        assert!(
            limits
                .check_client(Operation::Login, ip("2001:db8:1:3::1"))
                .await
                .is_ok()
        );
        // An IPv4-mapped address is its IPv4 address.
        assert!(
            limits
                .check_client(Operation::Login, ip("9.9.9.9"))
                .await
                .is_ok()
        );
        assert!(
            limits
                .check_client(Operation::Login, ip("9.9.9.9"))
                .await
                .is_ok()
        );
        assert!(
            limits
                .check_client(Operation::Login, ip("::ffff:9.9.9.9"))
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn mails_are_limited_per_recipient_whoever_asks_and_per_sender() {
        let limits = RateLimits::in_memory(RateLimitSettings {
            mails_per_recipient_per_hour: NonZeroU32::new(2),
            mails_per_ip_per_hour: NonZeroU32::new(3),
            ..RateLimitSettings::default()
        });
        let op = Operation::RequestPasswordReset;
        assert!(
            limits
                .check_mail(op, "victim@x", ip("1.1.1.1"))
                .await
                .is_ok()
        );
        assert!(
            limits
                .check_mail(op, "victim@x", ip("2.2.2.2"))
                .await
                .is_ok()
        );
        // A third address asking changes nothing for the recipient: an hour's worth is gone.
        match limits.check_mail(op, "victim@x", ip("3.3.3.3")).await {
            Err(AppError::RateLimited {
                retry_after_seconds,
            }) => assert!((1..=1800).contains(&retry_after_seconds)),
            other => panic!("expected RATE_LIMITED, got {other:?}"),
        }
        // One client mailing many addresses runs out too.
        let sender = ip("4.4.4.4");
        for n in 0..3 {
            let to = format!("{n}@x");
            assert!(limits.check_mail(op, &to, sender).await.is_ok());
        }
        assert!(limits.check_mail(op, "fresh@x", sender).await.is_err());
    }

    #[tokio::test]
    async fn switched_off_buckets_never_refuse() {
        let limits = limits(0, 0);
        let ip = ip("1.2.3.4");
        for _ in 0..1000 {
            assert!(limits.check_client(Operation::Login, ip).await.is_ok());
            assert!(
                limits
                    .check_account(Operation::Login, "a", ip)
                    .await
                    .is_ok()
            );
        }
    }
}
