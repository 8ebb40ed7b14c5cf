//! Start-up: opens the database, settles keys and limits, builds the router (`http`), binds
//! (port 0 allowed) and serves until a shutdown signal.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    num::{NonZeroU32, NonZeroUsize},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use axum::{Router, http::HeaderValue};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::TimeDelta;
use ipnet::IpNet;
use rand::RngCore;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::{
    admin::{self, AdminSocket},
    auth::{ClaimsTemplate, KeySet, PasswordHasher, TokenKeys},
    config::{Config, SameSite},
    graphql::{DocumentChecks, RefreshCookie, build_engine, document_limits},
    http::{
        self, EdgeLimits, FrontendSettings,
        server::{Lifecycle, ServerSettings},
    },
    mail::{LinkTemplate, Mailer, OutboxSender, Templates, Transport, sender::Doorbell},
    service::{
        AuthService, Lifetimes,
        accounts::{AccountSettings, Accounts},
        admin::Admin,
        events::SessionEvents,
        rate_limit::{RateLimitSettings, RateLimits},
        second_factors::SecondFactorSettings,
    },
    store::{
        DatabaseLock, HealthStore, MongoStore, PoolSettings, SESSION_CACHE_CAPACITY, SeaStore,
        SettingStore, Storage,
    },
};

/// Shortest JWT secret accepted: 256 bits, the size of an HS256 key (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = crate::auth::keys::MIN_HMAC_SECRET_BYTES;
/// The setting under which a generated secret is kept, shared by every instance.
const GENERATED_SECRET_SETTING: &str = "jwt_secret_key";

/// authql, built and bound (port 0 allowed), ready to serve with [`Application::run_until`].
pub struct Application {
    listener: TcpListener,
    server: ServerSettings,
    /// Connection slots and the shutdown signal, shared with the router's WebSockets.
    lifecycle: Lifecycle,
    /// `METRICS_ADDR`: `/metrics` on a listener of its own.
    metrics_listener: Option<TcpListener>,
    router: Router,
    service: AuthService,
    pruning: Option<Pruning>,
    /// Delivers the outbox's mails and webhooks.
    mail_sender: OutboxSender,
    /// SQLite: where `authql admin` hands its commands to this process; removed with it.
    _admin_socket: Option<AdminSocket>,
    /// SQLite: held while the application lives, so no second process serves the file.
    _database_lock: Option<DatabaseLock>,
}

/// When and what the background pruning deletes.
#[derive(Debug, Clone, Copy)]
struct Pruning {
    interval: Duration,
    retention: TimeDelta,
    batch: u64,
}

impl Application {
    /// Connects to the database, applies migrations, loads the signing keys and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let pool = PoolSettings {
            max_connections: config.database_max_connections,
            connect_timeout: Duration::from_secs(config.database_connect_timeout_seconds),
            acquire_timeout: Duration::from_secs(config.database_acquire_timeout_seconds),
            busy_timeout: Duration::from_secs(config.database_busy_timeout_seconds),
        };
        // The metrics recorder, before anything records.
        crate::metrics::handle();
        // Settings that can be wrong are checked before the database is created or touched.
        check_database_scheme(&config.database_url)?;
        let frontend = frontend_settings(&config)?;
        let edge = edge_limits(&config)?;
        let templates = Templates::load(config.mail_templates_dir.as_deref())
            .map_err(|why| anyhow::anyhow!(why))?;
        let transport = mail_transport(&config)?;
        let claims_template = config
            .access_token_claims_template
            .as_deref()
            .map(|path| {
                ClaimsTemplate::load(path).map_err(|why| {
                    anyhow::anyhow!("ACCESS_TOKEN_CLAIMS_TEMPLATE cannot be used: {why}")
                })
            })
            .transpose()?;
        let webhooks = webhook_settings(&config)?;
        let lifetimes = lifetimes(&config)?;
        let retention =
            duration_setting(config.prune_retention_seconds, "PRUNE_RETENTION_SECONDS")?;
        let pruning = (config.prune_interval_seconds > 0).then(|| Pruning {
            interval: Duration::from_secs(config.prune_interval_seconds),
            retention,
            batch: config.prune_batch_size,
        });
        let patience = Duration::from_secs(config.database_connect_timeout_seconds);
        // One process serves a SQLite file: that is what makes the session cache exact.
        let database_lock = SeaStore::sqlite_path(&config.database_url)
            .map(DatabaseLock::acquire)
            .transpose()
            .map_err(|why| anyhow::anyhow!("DATABASE_URL: {why}"))?;
        let store: Storage = if MongoStore::handles(&config.database_url) {
            let store = MongoStore::connect(&config.database_url, pool)
                .await
                .context("could not reach the MongoDB deployment (DATABASE_URL)")?;
            if config.migrate_on_start {
                // MongoDB deletes a session `retention` after its absolute expiry by itself.
                let session_ttl =
                    pruning.map(|_| Duration::from_secs(config.prune_retention_seconds));
                store
                    .create_indexes(session_ttl)
                    .await
                    .context("could not create the MongoDB indexes")?;
            }
            wait_until_writable(&store, patience).await?;
            Storage::of(Arc::new(store))
        } else {
            let store = SeaStore::connect(&config.database_url, pool)
                .await
                .context("could not open the database (DATABASE_URL)")?;
            if config.migrate_on_start {
                store
                    .migrate()
                    .await
                    .context("could not apply database migrations")?;
            }
            wait_until_writable(&store, patience).await?;
            match (&database_lock, NonZeroUsize::new(SESSION_CACHE_CAPACITY)) {
                (Some(_), Some(capacity)) => Storage::cached(store, capacity),
                _ => Storage::of(Arc::new(store)),
            }
        };
        let keys = KeySet::load(&config, async || {
            jwt_secret(&config, store.settings.as_ref()).await
        })
        .await?;
        let jwks = keys.jwks().map(Arc::new);
        let tokens = TokenKeys::new(keys, &config.jwt_issuer, config.jwt_leeway_seconds);
        let hash_slots = config
            .bcrypt_max_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let hash_queue = config
            .bcrypt_max_queue
            .map_or(hash_slots.saturating_mul(16), |queue| {
                usize::try_from(queue).unwrap_or(usize::MAX)
            });
        let passwords = PasswordHasher::new(config.bcrypt_cost, hash_slots, hash_queue)
            .map_err(|_| anyhow::anyhow!("could not set up password hashing"))?;
        let rate_limit_settings = RateLimitSettings {
            per_ip_per_minute: NonZeroU32::new(config.rate_limit_ip_per_minute),
            per_account_per_minute: NonZeroU32::new(config.rate_limit_account_per_minute),
            mails_per_recipient_per_hour: NonZeroU32::new(
                config.rate_limit_mails_per_address_per_hour,
            ),
            mails_per_ip_per_hour: NonZeroU32::new(config.rate_limit_mails_per_ip_per_hour),
            ipv6_prefix: config.rate_limit_ipv6_prefix,
        };
        // Several instances share a PostgreSQL or MongoDB database, so they share its buckets; a
        // SQLite file is served by one process, which keeps them in memory.
        let rate_limits = if !config.database_url.starts_with("sqlite:") {
            RateLimits::shared(rate_limit_settings, store.rate_limits.clone())
        } else {
            RateLimits::in_memory(rate_limit_settings)
        };
        let events = SessionEvents::new(store.events.clone());
        let address = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("could not listen on {address}"))?;
        let accounts = Arc::new(accounts(&config, listener.local_addr()?, templates)?);
        let (store, webhook_client) = match webhooks {
            Some(webhooks) => {
                let doorbell = accounts.doorbell.clone();
                let store =
                    store.with_webhooks(webhooks.targets, Arc::new(move || doorbell.ring()));
                (store, Some(Arc::new(webhooks.client)))
            }
            None => (store, None),
        };
        let mail_sender = OutboxSender::new(
            store.outbox.clone(),
            Arc::new(transport),
            webhook_client,
            accounts.doorbell.clone(),
        );
        // SQLite: `authql admin` cannot write the file behind this process's session cache,
        // so it hands its commands over a socket beside the file.
        let admin_socket = match SeaStore::sqlite_path(&config.database_url) {
            Some(path) if database_lock.is_some() => {
                let socket = admin::socket_path(&path);
                let admin = Admin::new(store.clone(), events.clone(), accounts.clone());
                Some(AdminSocket::bind(socket.clone(), admin).with_context(|| {
                    format!(
                        "could not listen for admin commands on {}",
                        socket.display()
                    )
                })?)
            }
            _ => None,
        };
        let second_factors = second_factor_settings(&config, listener.local_addr()?)?;
        let oidc = oidc_sign_in(&config, listener.local_addr()?).await?;
        let service = AuthService::new(
            store,
            tokens,
            passwords,
            lifetimes,
            rate_limits,
            events.clone(),
            accounts,
            second_factors,
            claims_template,
            oidc,
        );

        let server = ServerSettings {
            header_read_timeout: Duration::from_secs(config.header_read_timeout_seconds),
            max_connections: config
                .max_connections
                .map_or_else(default_max_connections, |max| {
                    usize::try_from(max).unwrap_or(usize::MAX)
                }),
            shutdown_timeout: Duration::from_secs(config.shutdown_timeout_seconds),
        };
        let lifecycle = Lifecycle::new(server.max_connections);
        let router = http::router(
            build_engine(service.clone(), &config, frontend.refresh_cookie.clone()),
            DocumentChecks::new(document_limits(&config)),
            service.clone(),
            jwks,
            edge,
            frontend,
            lifecycle.clone(),
        );
        let metrics_listener = match config.metrics_addr {
            Some(address) => Some(
                TcpListener::bind(address)
                    .await
                    .with_context(|| format!("could not listen on {address} (METRICS_ADDR)"))?,
            ),
            None => None,
        };
        Ok(Self {
            listener,
            server,
            lifecycle,
            metrics_listener,
            router,
            service,
            pruning,
            mail_sender,
            _admin_socket: admin_socket,
            _database_lock: database_lock,
        })
    }

    /// Where the public port listens (the port picked, when 0 was asked for).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where `/metrics` is served when `METRICS_ADDR` is set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// Serves until SIGTERM or Ctrl-C, then shuts down (`http::server`): idle connections close
    /// at once, WebSockets get a close frame, requests in flight get `SHUTDOWN_TIMEOUT_SECONDS`.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then shuts down as `http::server` says and stops the
    /// background tasks.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.local_addr()?, "authql listening");
        let pruner = self
            .pruning
            .map(|pruning| tokio::spawn(prune_periodically(self.service.clone(), pruning)));
        // Session events from every instance on the database, for this one's subscribers.
        let events = self.service.events().clone();
        let listener = tokio::spawn(supervise("session_events", move || {
            let events = events.clone();
            async move { events.listen().await }
        }));
        let upkeep = tokio::spawn(crate::metrics::upkeep_periodically());
        let mail_sender = self.mail_sender.clone();
        let mails = tokio::spawn(supervise("mail_outbox", move || {
            let mail_sender = mail_sender.clone();
            async move { mail_sender.run().await }
        }));
        let metrics_server = self.metrics_listener.map(|listener| {
            if let Ok(address) = listener.local_addr() {
                tracing::info!(%address, "metrics listening");
            }
            let settings = ServerSettings {
                max_connections: 64,
                ..self.server
            };
            tokio::spawn(http::server::serve(
                listener,
                http::metrics_router(self.service.clone()),
                settings,
                Lifecycle::new(settings.max_connections),
                std::future::pending(),
            ))
        });
        let served = http::server::serve(
            self.listener,
            self.router,
            self.server,
            self.lifecycle,
            shutdown,
        )
        .await;
        if let Some(pruner) = pruner {
            pruner.abort();
        }
        listener.abort();
        upkeep.abort();
        mails.abort();
        if let Some(metrics_server) = metrics_server {
            metrics_server.abort();
        }
        served
    }
}

/// Runs `task` until it ends well (`Ok`); after each failure, logs it, counts it in
/// `authql_background_task_restarts_total{task}` and starts it again after a pause that doubles
/// from 1 s up to a minute (back to 1 s after a run of a minute without failing), so that a
/// database away at start-up, or a connection lost later, never silently switches the task off.
pub async fn supervise<F, Fut>(task: &'static str, mut start: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    const FIRST_PAUSE: Duration = Duration::from_secs(1);
    const LONGEST_PAUSE: Duration = Duration::from_secs(60);
    let mut pause = FIRST_PAUSE;
    loop {
        let started = tokio::time::Instant::now();
        match start().await {
            Ok(()) => return,
            Err(why) => {
                if started.elapsed() >= LONGEST_PAUSE {
                    pause = FIRST_PAUSE;
                }
                tracing::warn!(event = "background_task_failed", task, why = %why, retry_in_seconds = pause.as_secs(), "a background task failed; starting it again");
                crate::metrics::background_task_restart(task);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_PAUSE);
            }
        }
    }
}

/// Deletes ended sessions now and then. Every instance may run this: the deletes are
/// idempotent, and a failure (the database away) is logged and tried again next time.
async fn prune_periodically(service: AuthService, pruning: Pruning) {
    let mut ticks = tokio::time::interval(pruning.interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match service
            .prune_ended_sessions(pruning.retention, pruning.batch)
            .await
        {
            Ok(0) => {}
            Ok(pruned) => {
                tracing::info!(event = "sessions_pruned", pruned, "pruned ended sessions")
            }
            Err(_) => tracing::warn!(event = "prune_failed", "pruning failed; will retry"),
        }
        match service.prune_expired_tokens(pruning.retention).await {
            Ok(0) => {}
            Ok(pruned) => {
                tracing::info!(
                    event = "tokens_pruned",
                    pruned,
                    "pruned expired one-time tokens"
                )
            }
            Err(_) => tracing::warn!(event = "prune_failed", "pruning tokens failed; will retry"),
        }
        if service.prune_expired_challenges().await.is_err() {
            tracing::warn!(
                event = "prune_failed",
                "pruning expired second-factor challenges failed; will retry"
            );
        }
        if service.prune_rate_limits().await.is_err() {
            tracing::warn!(
                event = "prune_failed",
                "pruning rate-limit buckets failed; will retry"
            );
        }
    }
}

/// `DATABASE_URL` names a database authql can use: `sqlite:`, `postgres://` (or
/// `postgresql://`), `mongodb://` or `mongodb+srv://`. Anything else stops the start with the
/// scheme alone: the driver's own message would repeat the whole URL, password included.
fn check_database_scheme(database_url: &str) -> anyhow::Result<()> {
    let supported = ["sqlite:", "postgres://", "postgresql://"]
        .iter()
        .any(|scheme| database_url.starts_with(scheme))
        || MongoStore::handles(database_url);
    if supported {
        return Ok(());
    }
    let scheme = database_url
        .split_once(':')
        .map_or("(none)", |(scheme, _)| scheme);
    let scheme: String = scheme.chars().take(32).collect();
    bail!(
        "DATABASE_URL: the scheme {scheme:?} is not one authql speaks; use sqlite://FILE, postgres://... or mongodb://..."
    )
}

/// `MAX_CONNECTIONS` when unset: the open-file limit less what the database pool, the logs and
/// the admin socket need, at most 10,000.
fn default_max_connections() -> usize {
    const RESERVED: u64 = 64;
    const CEILING: u64 = 10_000;
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the limit into the struct it is given and touches nothing else.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    let open_files = if read { limit.rlim_cur } else { 1024 };
    usize::try_from(open_files.saturating_sub(RESERVED).clamp(16, CEILING)).unwrap_or(16)
}

fn edge_limits(config: &Config) -> anyhow::Result<EdgeLimits> {
    let trusted_proxies = config
        .trusted_proxies
        .iter()
        .map(|proxy| {
            proxy
                .parse::<IpNet>()
                .or_else(|_| proxy.parse::<IpAddr>().map(IpNet::from))
                .with_context(|| {
                    format!("TRUSTED_PROXIES: {proxy:?} is not an address or CIDR range")
                })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(EdgeLimits {
        websocket: http::websocket::WebSocketSettings {
            token_leeway: Duration::from_secs(config.jwt_leeway_seconds),
            init_timeout: Duration::from_secs(config.websocket_init_timeout_seconds),
            ping_interval: Duration::from_secs(config.websocket_ping_interval_seconds),
            max_subscriptions: usize::try_from(config.websocket_max_subscriptions)
                .unwrap_or(usize::MAX),
            max_connections_per_user: usize::try_from(config.websocket_max_connections_per_user)
                .unwrap_or(usize::MAX),
        },
        max_body_bytes: config.max_body_bytes,
        request_timeout: Duration::from_secs(config.request_timeout_seconds),
        trusted_proxies,
        introspection_clients: http::IntrospectionClients::new(&config.introspection_clients),
    })
}

/// A database that cannot take a write (read-only, locked by another process, a full disk, a
/// read-only standby, a MongoDB secondary) stops the start with a plain message, after trying
/// for `patience`.
async fn wait_until_writable(store: &dyn HealthStore, patience: Duration) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        match store.ping().await {
            Ok(()) => return Ok(()),
            Err(error) if tokio::time::Instant::now() >= deadline => {
                bail!(
                    "the database at DATABASE_URL cannot be written ({error}); authql needs to write sessions. Check that it is not read-only, locked by another process, or out of space"
                )
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// CORS origins, GraphiQL, persisted queries and the refresh cookie, checked at start-up.
fn frontend_settings(config: &Config) -> anyhow::Result<FrontendSettings> {
    let allowed_origins: Vec<HeaderValue> = config
        .cors_allowed_origins
        .iter()
        .map(|origin| origin.trim())
        .filter(|origin| !origin.is_empty())
        .map(parse_origin)
        .collect::<anyhow::Result<_>>()?;
    if config.refresh_token_cookie_same_site == SameSite::None
        && !config.refresh_token_cookie_secure
    {
        bail!(
            "REFRESH_TOKEN_COOKIE_SAME_SITE=None needs REFRESH_TOKEN_COOKIE_SECURE=true: browsers drop SameSite=None cookies that are not Secure"
        );
    }
    if config.refresh_token_cookie {
        // Ports do not count for a site: the address still to be bound tells authql's.
        let own = public_url(config, SocketAddr::new(config.host, config.port))?;
        warn_of_origins_without_the_cookie(
            &allowed_origins,
            config.refresh_token_cookie_same_site,
            &own,
        );
    }
    Ok(FrontendSettings {
        allowed_origins,
        cors_max_age: Duration::from_secs(config.cors_max_age_seconds),
        graphiql: config.graphiql,
        refresh_cookie: config.refresh_token_cookie.then(|| {
            RefreshCookie::new(
                config.refresh_token_cookie_secure,
                config.refresh_token_cookie_same_site,
            )
        }),
        persisted_queries: config.persisted_queries_cache_size,
    })
}

/// An origin as browsers send it (RFC 6454 § 6.1): `scheme://host[:port]`, lower case, no path.
fn parse_origin(origin: &str) -> anyhow::Result<HeaderValue> {
    let refuse = |why: &str| anyhow::anyhow!("CORS_ALLOWED_ORIGINS: {origin:?} {why}");
    if origin == "*" || origin == "null" {
        return Err(refuse(
            "is not allowed: list the exact origins (credentials are never allowed for every origin)",
        ));
    }
    let (scheme, authority) = origin
        .split_once("://")
        .ok_or_else(|| refuse("is not an origin like https://app.example.com"))?;
    if !matches!(scheme, "http" | "https")
        || authority.is_empty()
        || authority.contains(['/', '?', '#', '@', ' '])
    {
        return Err(refuse(
            "is not an origin like https://app.example.com (scheme, host and port only)",
        ));
    }
    HeaderValue::from_str(&origin.to_ascii_lowercase())
        .map_err(|_| refuse("is not a valid header value"))
}

/// A `tracing::warn!` (`event = "refresh_cookie_cross_site"`) for each origin that
/// [`origins_without_the_cookie`] finds: nothing else would tell the developer why every
/// `refresh` from that page answers `MISSING`.
fn warn_of_origins_without_the_cookie(
    allowed_origins: &[HeaderValue],
    policy: SameSite,
    public_url: &str,
) {
    let Some(own) = url::Url::parse(public_url).ok().map(|url| url.origin()) else {
        return;
    };
    let Some(authql_site) = Site::of(&own) else {
        return;
    };
    for (origin, origin_site) in origins_without_the_cookie(allowed_origins, policy, &own) {
        tracing::warn!(
            event = "refresh_cookie_cross_site",
            origin,
            origin_site = %origin_site,
            authql_site = %authql_site,
            same_site = ?policy,
            "REFRESH_TOKEN_COOKIE: the CORS origin {origin} is on another site than authql \
             ({authql_site}), so browsers neither keep nor send the SameSite={policy:?} refresh \
             cookie for its pages, and `refresh` without an argument answers MISSING there. \
             Serve the app and authql under one site (a dev-server proxy such as Vite's \
             server.proxy, or one host name for both), or, for a frontend really on another \
             site, set REFRESH_TOKEN_COOKIE_SAME_SITE=None (with REFRESH_TOKEN_COOKIE_SECURE=true)"
        );
    }
}

/// The CORS origins whose pages never get the refresh cookie, each with its site: with
/// `SameSite` `Strict` or `Lax` (`policy`) a browser keeps the cookie from, and sends it with,
/// a `fetch` only when the page is on authql's own site (`own`); `None` reaches every site.
fn origins_without_the_cookie<'a>(
    allowed_origins: &'a [HeaderValue],
    policy: SameSite,
    own: &url::Origin,
) -> Vec<(&'a str, Site)> {
    if policy == SameSite::None {
        return Vec::new();
    }
    allowed_origins
        .iter()
        .filter_map(|origin| origin.to_str().ok())
        .filter_map(|origin| {
            let parsed = url::Url::parse(origin).ok()?.origin();
            let site = Site::of(&parsed)?;
            (!same_site(&parsed, own)).then_some((origin, site))
        })
        .collect()
}

/// A site, as a browser draws the line for `SameSite` cookies (HTML Standard § 7.1.1 "Sites",
/// "obtain a site"): a scheme and the host's registrable domain (eTLD+1 by the Public Suffix
/// List, its private section included, as the URL Standard § 3.2 says), or the host itself when
/// it has none (an IP address, `localhost`, a public suffix such as `github.io`). A trailing dot
/// stays: `example.com.` is not `example.com`. Ports never count.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Site {
    scheme: String,
    host: String,
}

impl Site {
    /// The site of `origin`; `None` for an opaque origin, which is a site of its own.
    fn of(origin: &url::Origin) -> Option<Self> {
        let url::Origin::Tuple(scheme, host, _port) = origin else {
            return None;
        };
        let host = match host {
            url::Host::Domain(domain) => psl::domain(domain.as_bytes())
                .and_then(|registrable| std::str::from_utf8(registrable.as_bytes()).ok())
                .unwrap_or(domain)
                .to_owned(),
            // `[::1]` in brackets, as in a URL.
            address => address.to_string(),
        };
        Some(Self {
            scheme: scheme.clone(),
            host,
        })
    }
}

impl std::fmt::Display for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)
    }
}

/// Whether `a` and `b` are *same site* in the browser's schemeful sense (HTML Standard § 7.1.1
/// "same site"; RFC 6265bis § 5.2, which cookies' `SameSite` follows): the same scheme and the
/// same registrable domain ([`Site`]); ports do not count, and an IP address or `localhost` is
/// a site of its own. So `http://localhost:5173` and `http://localhost:8000` are same site, and
/// `http://localhost:5173` and `http://127.0.0.1:8000` are not; nor are `http://app.example.com`
/// and `https://auth.example.com`, or `https://a.github.io` and `https://b.github.io`.
fn same_site(a: &url::Origin, b: &url::Origin) -> bool {
    match (Site::of(a), Site::of(b)) {
        (Some(a), Some(b)) => a == b,
        // An opaque origin is same site with itself only.
        _ => a == b,
    }
}

/// `PUBLIC_URL`, checked (an `http(s)` URL without query or fragment; no trailing `/`), or
/// `http://HOST:PORT` of the bound address (`localhost` for an unspecified HOST).
fn public_url(config: &Config, bound: SocketAddr) -> anyhow::Result<String> {
    let Some(configured) = config.public_url.as_deref().map(str::trim) else {
        let host = if bound.ip().is_unspecified() {
            "localhost".to_owned()
        } else {
            SocketAddr::new(bound.ip(), 0)
                .to_string()
                .trim_end_matches(":0")
                .to_owned()
        };
        return Ok(format!("http://{host}:{}", bound.port()));
    };
    let parsed = url::Url::parse(configured)
        .ok()
        .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
        .with_context(|| {
            format!(
                "PUBLIC_URL is not an http(s) URL like https://auth.example.com: {configured:?}"
            )
        })?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        bail!("PUBLIC_URL has no query or fragment: {configured:?}");
    }
    Ok(configured.trim_end_matches('/').to_owned())
}

/// How long the start waits for the OpenID Providers' first discovery; one that has not
/// answered by then is carried on in the background.
const OIDC_DISCOVERY_PATIENCE: Duration = Duration::from_secs(5);

/// OpenID Connect sign-in, when OIDC_PROVIDERS names providers: their settings and
/// OIDC_REDIRECT_URIS checked, each provider discovered (waiting at most
/// [`OIDC_DISCOVERY_PATIENCE`]; one that is away is retried in the background).
async fn oidc_sign_in(
    config: &Config,
    bound: SocketAddr,
) -> anyhow::Result<Option<crate::service::oidc::OidcSignIn>> {
    if config.oidc_provider_settings.is_empty() {
        if !config.oidc_providers.is_empty() {
            bail!("OIDC_PROVIDERS is set but its providers' settings were not read");
        }
        return Ok(None);
    }
    let mut redirect_uris = Vec::new();
    for uri in config.oidc_redirect_uris.iter().map(|uri| uri.trim()) {
        if uri.is_empty() {
            continue;
        }
        let parsed = url::Url::parse(uri)
            .ok()
            .filter(|url| matches!(url.scheme(), "http" | "https") && url.host().is_some())
            .with_context(|| {
                format!("OIDC_REDIRECT_URIS: {uri:?} is not an absolute http(s) URL")
            })?;
        if parsed.fragment().is_some() {
            bail!("OIDC_REDIRECT_URIS: {uri:?} has a fragment (RFC 6749 § 3.1.2 forbids one)");
        }
        if parsed
            .query_pairs()
            .any(|(name, _)| matches!(name.as_ref(), "code" | "state" | "error" | "iss"))
        {
            bail!(
                "OIDC_REDIRECT_URIS: {uri:?} has a parameter the sign-in adds (code, state, error, iss)"
            );
        }
        redirect_uris.push(uri.to_owned());
    }
    if redirect_uris.is_empty() {
        bail!("OIDC_PROVIDERS needs OIDC_REDIRECT_URIS: the app pages a sign-in returns to");
    }
    let callback = format!("{}/auth/oidc/callback", public_url(config, bound)?);
    let providers = Arc::new(crate::oidc::OidcProviders::new(
        config.oidc_provider_settings.clone(),
        &callback,
    )?);
    providers.start(OIDC_DISCOVERY_PATIENCE).await;
    Ok(Some(crate::service::oidc::OidcSignIn::new(
        providers,
        redirect_uris,
    )))
}

/// The second factors' settings: `APP_NAME`, `REAUTHENTICATION_MAX_AGE`, and the WebAuthn
/// relying party (`WEBAUTHN_RP_ID`, `WEBAUTHN_RP_NAME`, `WEBAUTHN_ORIGINS`). Where the relying
/// party was set explicitly and cannot be (an IP address, or no origin under its id), the
/// start stops saying why; where it was only derived from `PUBLIC_URL`, passkeys are off
/// (PASSKEYS_NOT_CONFIGURED) and a warning says why.
fn second_factor_settings(
    config: &Config,
    bound: SocketAddr,
) -> anyhow::Result<SecondFactorSettings> {
    let reauthentication_max_age =
        duration_setting(config.reauthentication_max_age, "REAUTHENTICATION_MAX_AGE")?;
    let explicit = config.webauthn_rp_id.is_some() || !config.webauthn_origins.is_empty();
    let webauthn = match relying_party(config, bound) {
        Ok(webauthn) => Some(Arc::new(webauthn)),
        Err(why) if explicit => bail!("WEBAUTHN_RP_ID / WEBAUTHN_ORIGINS: {why}"),
        Err(why) => {
            tracing::warn!(event = "passkeys_off", reason = %why, "passkeys are off: set WEBAUTHN_RP_ID (a domain) and WEBAUTHN_ORIGINS");
            None
        }
    };
    Ok(SecondFactorSettings {
        issuer: config.app_name.clone(),
        webauthn,
        reauthentication_max_age,
    })
}

/// The WebAuthn relying party (WebAuthn Level 3 § 5.1.2): its id (`WEBAUTHN_RP_ID`, else the
/// host of `PUBLIC_URL`, else `localhost`) and the origins allowed to use it
/// (`WEBAUTHN_ORIGINS`, else `PUBLIC_URL`'s origin and `CORS_ALLOWED_ORIGINS`, and
/// `http://localhost:PORT` when `PUBLIC_URL` is unset).
fn relying_party(config: &Config, bound: SocketAddr) -> Result<webauthn_rs::Webauthn, String> {
    let public = url::Url::parse(&public_url(config, bound).map_err(|why| why.to_string())?)
        .map_err(|why| why.to_string())?;
    let rp_id = match config.webauthn_rp_id.as_deref().map(str::trim) {
        Some(id) => id.to_ascii_lowercase(),
        None if config.public_url.is_none() => "localhost".to_owned(),
        None => match public.host() {
            Some(url::Host::Domain(domain)) => domain.to_ascii_lowercase(),
            _ => return Err(format!("PUBLIC_URL's host {public} is not a domain")),
        },
    };
    if rp_id.parse::<std::net::IpAddr>().is_ok() || rp_id.is_empty() {
        return Err(format!("{rp_id:?} is not a domain"));
    }
    // Browsers refuse an RP id that is a public suffix (WebAuthn § 5.1.3: a registrable domain
    // suffix of the origin's effective domain).
    if rp_id != "localhost" && psl::suffix_str(&rp_id) == Some(rp_id.as_str()) {
        return Err(format!("{rp_id:?} is a public suffix, not a site's domain"));
    }
    let origins: Vec<String> = if config.webauthn_origins.is_empty() {
        let mut origins = vec![public.origin().ascii_serialization()];
        if config.public_url.is_none() {
            origins.push(format!("http://localhost:{}", bound.port()));
        }
        origins.extend(config.cors_allowed_origins.iter().cloned());
        origins
    } else {
        config.webauthn_origins.clone()
    };
    let mut parsed = Vec::new();
    for origin in origins.iter().map(|origin| origin.trim()) {
        let url = url::Url::parse(origin).map_err(|_| format!("{origin:?} is not an origin"))?;
        // A secure context only (WebAuthn needs one): https, or http on localhost.
        let local = url
            .domain()
            .is_some_and(|host| host == "localhost" || host.ends_with(".localhost"));
        if url.scheme() != "https" && !(url.scheme() == "http" && local) {
            if config.webauthn_origins.is_empty() {
                // Derived from PUBLIC_URL and CORS: such a page simply cannot use passkeys.
                continue;
            }
            return Err(format!(
                "{origin:?} is not a secure context (https, or http://localhost)"
            ));
        }
        parsed.push(url);
    }
    let under_rp_id = |url: &url::Url| {
        url.domain()
            .is_some_and(|domain| domain == rp_id || domain.ends_with(&format!(".{rp_id}")))
    };
    let (first, others): (Vec<_>, Vec<_>) = parsed.iter().partition(|url| under_rp_id(url));
    let Some((first, rest)) = first.split_first() else {
        return Err(format!("no origin is {rp_id} or under it"));
    };
    let rp_name = config
        .webauthn_rp_name
        .clone()
        .unwrap_or_else(|| config.app_name.clone());
    let mut builder = webauthn_rs::WebauthnBuilder::new(&rp_id, first)
        .map_err(|why| format!("{why}"))?
        .rp_name(&rp_name);
    for origin in rest {
        builder = builder.append_allowed_origin(origin);
    }
    for origin in others {
        tracing::warn!(origin = %origin, rp_id = %rp_id, "an origin not under WEBAUTHN_RP_ID cannot use passkeys");
    }
    builder.build().map_err(|why| format!("{why}"))
}

/// `WEBHOOK_URLS` and `WEBHOOK_SECRET`, checked: `None` without URLs.
pub(crate) fn webhook_settings(
    config: &Config,
) -> anyhow::Result<Option<crate::webhooks::WebhookSettings>> {
    let settings = crate::webhooks::WebhookSettings::from_settings(
        &config.webhook_urls,
        config.webhook_secret.as_ref(),
    )
    .map_err(|why| anyhow::anyhow!(why))?;
    if let Some(settings) = &settings {
        tracing::info!(
            endpoints = settings.targets.endpoints.len(),
            "webhooks on: every event is queued for each of WEBHOOK_URLS"
        );
    }
    Ok(settings)
}

/// Where mails go: `SMTP_URL`, or `.eml` files in `MAIL_DIR`.
fn mail_transport(config: &Config) -> anyhow::Result<Transport> {
    let smtp_url = config.smtp_url.as_ref().map(|url| url.expose_secret());
    let transport = Transport::from_settings(
        smtp_url,
        config.smtp_tls_ca_file.as_deref(),
        &config.mail_dir,
    )
    .map_err(|why| anyhow::anyhow!(why))?;
    if let Transport::Directory(directory) = &transport {
        tracing::warn!(
            directory = %directory.display(),
            "SMTP_URL is not set: mails are written as .eml files into MAIL_DIR (development only)"
        );
    }
    Ok(transport)
}

/// The account flows' settings and mail composer, for a server bound at `bound`.
pub(crate) fn accounts(
    config: &Config,
    bound: SocketAddr,
    templates: Templates,
) -> anyhow::Result<Accounts> {
    let public_url = public_url(config, bound)?;
    Ok(Accounts {
        settings: account_settings(config, &public_url)?,
        mailer: mailer(config, &public_url, templates)?,
        doorbell: Doorbell::default(),
    })
}

/// The mail composer: `MAIL_FROM` (by default `APP_NAME <noreply@PUBLIC_URL's host>`),
/// `APP_NAME`, the templates.
fn mailer(config: &Config, public_url: &str, templates: Templates) -> anyhow::Result<Mailer> {
    let from = match &config.mail_from {
        Some(from) => from.clone(),
        None => {
            let host = url::Url::parse(public_url)
                .ok()
                .and_then(|url| url.host_str().map(str::to_owned))
                .filter(|host| host.contains('.') && !host.starts_with('['))
                .unwrap_or_else(|| "localhost.localdomain".into());
            let name: String = config
                .app_name
                .chars()
                .filter(|c| c.is_alphanumeric() || *c == ' ')
                .collect();
            format!("{} <noreply@{host}>", name.trim())
        }
    };
    Mailer::new(&from, &config.app_name, templates).map_err(|why| anyhow::anyhow!(why))
}

/// `EMAIL_VERIFICATION`, the tokens' lifetimes and the links' targets.
fn account_settings(config: &Config, public_url: &str) -> anyhow::Result<AccountSettings> {
    let link = |setting: &str, configured: &Option<String>, page: &str| match configured {
        Some(template) => {
            LinkTemplate::parse(setting, template).map_err(|why| anyhow::anyhow!(why))
        }
        None => Ok(LinkTemplate::own_page(public_url, page)),
    };
    Ok(AccountSettings {
        verification: config.email_verification,
        password_reset_expires: duration_setting(
            config.password_reset_token_expires,
            "PASSWORD_RESET_TOKEN_EXPIRES",
        )?,
        verification_expires: duration_setting(
            config.email_verification_token_expires,
            "EMAIL_VERIFICATION_TOKEN_EXPIRES",
        )?,
        password_reset_link: link(
            "PASSWORD_RESET_URL",
            &config.password_reset_url,
            "/reset-password",
        )?,
        verification_link: link(
            "EMAIL_VERIFICATION_URL",
            &config.email_verification_url,
            "/verify-email",
        )?,
    })
}

fn lifetimes(config: &Config) -> anyhow::Result<Lifetimes> {
    Ok(Lifetimes {
        access_token: duration_setting(
            config.jwt_access_token_expires,
            "JWT_ACCESS_TOKEN_EXPIRES",
        )?,
        session: duration_setting(
            config.jwt_refresh_token_expires,
            "JWT_REFRESH_TOKEN_EXPIRES",
        )?,
        session_idle: duration_setting(config.session_idle_timeout, "SESSION_IDLE_TIMEOUT")?,
        refresh_reuse_grace: duration_setting(
            config.refresh_reuse_grace_seconds,
            "REFRESH_REUSE_GRACE_SECONDS",
        )?,
        max_sessions_per_user: usize::try_from(config.max_sessions_per_user).unwrap_or(usize::MAX),
    })
}

/// Longest duration a setting may hold: far beyond any sensible lifetime, and far from where
/// adding it to a date would overflow.
const MAX_DURATION_SECONDS: u64 = 100 * 365 * 24 * 3600;

/// A duration setting in seconds, refused (naming the setting) when out of range.
fn duration_setting(seconds: u64, setting: &str) -> anyhow::Result<TimeDelta> {
    if seconds > MAX_DURATION_SECONDS {
        bail!(
            "{setting} is {seconds} seconds; at most {MAX_DURATION_SECONDS} (100 years) is allowed"
        );
    }
    i64::try_from(seconds)
        .ok()
        .and_then(TimeDelta::try_seconds)
        .with_context(|| format!("{setting} is out of range"))
}

/// The configured secret, or the one generated and kept in the database.
async fn jwt_secret(config: &Config, store: &dyn SettingStore) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.jwt_secret_key {
        let secret = secret.expose_secret().as_bytes();
        if secret.len() < MIN_SECRET_BYTES {
            bail!(
                "JWT_SECRET_KEY is {} bytes long; it must be at least {MIN_SECRET_BYTES} bytes \
                 (for example: openssl rand -base64 48)",
                secret.len()
            );
        }
        return Ok(secret.to_vec());
    }
    let mut candidate = [0u8; 48];
    rand::rng().fill_bytes(&mut candidate);
    let secret = store
        .setting_or_insert(GENERATED_SECRET_SETTING, URL_SAFE_NO_PAD.encode(candidate))
        .await
        .context("could not read or store the generated JWT secret")?;
    tracing::warn!(
        "JWT_SECRET_KEY is not set: using a secret generated on first start and kept in the \
         database. Set JWT_SECRET_KEY to manage it yourself."
    );
    Ok(secret.into_bytes())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn origin(text: &str) -> url::Origin {
        url::Url::parse(text).expect("a URL").origin()
    }

    fn same(a: &str, b: &str) -> bool {
        let verdict = same_site(&origin(a), &origin(b));
        assert_eq!(
            verdict,
            same_site(&origin(b), &origin(a)),
            "{a} {b}: symmetric"
        );
        verdict
    }

    #[test]
    fn same_site_ignores_ports_and_subdomains_of_one_registrable_domain() {
        assert!(same("http://localhost:5173", "http://localhost:8000"));
        assert!(same("https://app.example.com", "https://auth.example.com"));
        assert!(same("https://example.com:8443", "https://www.example.com"));
        assert!(same("https://a.b.example.co.uk", "https://c.example.co.uk"));
        assert!(same("HTTPS://App.Example.COM", "https://auth.example.com"));
        // IDNA: the Unicode and the Punycode spelling are one host.
        assert!(same("https://a.bücher.de", "https://b.xn--bcher-kva.de"));
    }

    #[test]
    fn same_site_tells_hosts_ip_addresses_schemes_and_public_suffixes_apart() {
        assert!(!same("http://localhost:5173", "http://127.0.0.1:8000"));
        assert!(!same("http://127.0.0.1:5173", "http://127.0.0.2:8000"));
        assert!(!same("http://app.example.com", "https://auth.example.com"));
        assert!(!same("https://a.github.io", "https://b.github.io"));
        assert!(!same("https://github.io", "https://a.github.io"));
        assert!(!same("https://example.com", "https://example.org"));
        assert!(!same("http://app.localhost", "http://api.localhost"));
        assert!(same("http://127.0.0.1:5173", "http://127.0.0.1:8000"));
        // One address written two ways.
        assert!(same("http://127.1:5173", "http://127.0.0.1:8000"));
    }

    #[test]
    fn same_site_compares_ipv6_addresses_whole() {
        assert!(same("http://[::1]:5173", "http://[::1]:8000"));
        assert!(same("http://[0:0:0:0:0:0:0:1]", "http://[::1]:8000"));
        assert!(!same("http://[::1]:5173", "http://127.0.0.1:8000"));
        assert!(!same("http://[::1]:5173", "http://localhost:8000"));
        assert!(!same("http://[2001:db8::1]", "http://[2001:db8::2]"));
        assert!(!same("http://[::ffff:127.0.0.1]", "http://127.0.0.1"));
    }

    #[test]
    fn same_site_keeps_a_trailing_dot() {
        assert!(same(
            "https://app.example.com.",
            "https://auth.example.com."
        ));
        assert!(!same("https://example.com.", "https://example.com"));
        assert!(!same(
            "https://app.example.com.",
            "https://auth.example.com"
        ));
        assert!(!same("http://localhost.:5173", "http://localhost:8000"));
    }

    #[test]
    fn a_site_shows_its_scheme_and_registrable_domain_or_host() {
        let site = |text: &str| Site::of(&origin(text)).expect("a tuple origin").to_string();
        assert_eq!(site("http://localhost:5173"), "http://localhost");
        assert_eq!(site("http://127.0.0.1:8000"), "http://127.0.0.1");
        assert_eq!(site("http://[::1]:8000"), "http://[::1]");
        assert_eq!(site("https://a.b.example.co.uk"), "https://example.co.uk");
        assert_eq!(site("https://a.github.io"), "https://a.github.io");
        assert_eq!(site("https://github.io"), "https://github.io");
        assert_eq!(site("https://app.example.com."), "https://example.com.");
        assert_eq!(
            Site::of(&url::Url::parse("data:,x").unwrap().origin()),
            None
        );
    }

    #[test]
    fn an_opaque_origin_is_same_site_with_itself_only() {
        let opaque = url::Url::parse("data:,x").unwrap().origin();
        assert!(same_site(&opaque, &opaque));
        assert!(!same_site(
            &opaque,
            &url::Url::parse("data:,x").unwrap().origin()
        ));
        assert!(!same_site(&opaque, &origin("http://localhost")));
    }

    #[test]
    fn only_cors_origins_on_another_site_lose_a_strict_or_lax_cookie() {
        let listed: Vec<HeaderValue> = [
            "http://localhost:5173",
            "http://127.0.0.1:5173",
            "http://[::1]:5173",
        ]
        .into_iter()
        .map(|origin| parse_origin(origin).unwrap())
        .collect();
        let own = origin("http://127.0.0.1:8000");
        for policy in [SameSite::Strict, SameSite::Lax] {
            let warned: Vec<(&str, String)> = origins_without_the_cookie(&listed, policy, &own)
                .into_iter()
                .map(|(origin, site)| (origin, site.to_string()))
                .collect();
            assert_eq!(
                warned,
                [
                    ("http://localhost:5173", "http://localhost".to_owned()),
                    ("http://[::1]:5173", "http://[::1]".to_owned()),
                ]
            );
        }
        assert!(origins_without_the_cookie(&listed, SameSite::None, &own).is_empty());
    }

    proptest::proptest! {
        /// Ports never count; below a registrable domain every subdomain is one site; directly
        /// below a public suffix (`github.io`) each name is a site of its own; another scheme
        /// is another site.
        #[test]
        fn same_site_follows_the_registrable_domain(
            a in "[a-z0-9]{1,12}(\\.[a-z0-9]{1,12}){0,2}",
            b in "[a-z0-9]{1,12}",
            ports in (1u16.., 1u16..),
        ) {
            let (p, q) = ports;
            let at = |scheme: &str, host: String, port: u16| format!("{scheme}://{host}:{port}");
            let under = |label: &str, domain: &str| format!("{label}.{domain}");
            let a_https = at("https", under(&a, "example.com"), p);
            let b_https = at("https", under(&b, "example.com"), q);
            let a_http = at("http", under(&a, "example.com"), q);
            proptest::prop_assert!(same(&a_https, &b_https));
            proptest::prop_assert!(!same(&a_http, &a_https));
            let local_p = at("http", "localhost".into(), p);
            let local_q = at("http", "localhost".into(), q);
            proptest::prop_assert!(same(&local_p, &local_q));
            // `x.y.github.io` belongs to the site `y.github.io`.
            let a_pages = at("https", under(&a, "github.io"), p);
            let b_pages = at("https", under(&b, "github.io"), q);
            let a_last = a.rsplit('.').next().unwrap_or_default();
            proptest::prop_assert_eq!(same(&a_pages, &b_pages), a_last == b);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_background_task_that_fails_is_started_again_after_growing_pauses() {
        let starts = Arc::new(Mutex::new(Vec::new()));
        let recorded = starts.clone();
        supervise("test", move || {
            let mut starts = recorded.lock().unwrap();
            starts.push(tokio::time::Instant::now());
            let attempt = starts.len();
            async move {
                if attempt < 4 {
                    Err(format!("failure {attempt}"))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        let starts = starts.lock().unwrap();
        assert_eq!(starts.len(), 4, "started until it ended well");
        let pauses: Vec<u64> = starts
            .windows(2)
            .map(|pair| (pair[1] - pair[0]).as_secs())
            .collect();
        assert_eq!(pauses, [1, 2, 4]);
    }
}
