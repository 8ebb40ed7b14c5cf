//! Start-up: opens the database, settles keys and limits, builds the router (`http`), binds
//! (port 0 allowed) and serves until a shutdown signal.

use std::{
    future::Future,
    net::{IpAddr, SocketAddr},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, bail};
use axum::Router;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::TimeDelta;
use ipnet::IpNet;
use rand::RngCore;
use secrecy::ExposeSecret;
use tokio::net::TcpListener;

use crate::{
    auth::{PasswordHasher, TokenKeys},
    config::Config,
    graphql::build_schema,
    http::{self, EdgeLimits},
    service::{
        AuthService, Lifetimes,
        rate_limit::{RateLimitSettings, RateLimits},
    },
    store::{SeaStore, Store},
};

/// Shortest JWT secret accepted: 256 bits, the size of an HS256 key (RFC 7518 §3.2).
const MIN_SECRET_BYTES: usize = 32;
/// The setting under which a generated secret is kept, shared by every instance.
const GENERATED_SECRET_SETTING: &str = "jwt_secret_key";

pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    /// Connects to the database, applies migrations, settles the JWT secret and binds.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let store = SeaStore::connect(&config.database_url, config.database_max_connections)
            .await
            .context("could not open the database (DATABASE_URL)")?;
        if config.migrate_on_start {
            store
                .migrate()
                .await
                .context("could not apply database migrations")?;
        }
        let store: Arc<dyn Store> = Arc::new(store);
        let secret = jwt_secret(&config, store.as_ref()).await?;

        let tokens = TokenKeys::new(&secret, &config.jwt_issuer, config.jwt_leeway_seconds)
            .map_err(|_| anyhow::anyhow!("could not build the token keys"))?;
        let hash_slots = config
            .bcrypt_max_concurrency
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
        let passwords = PasswordHasher::new(config.bcrypt_cost, hash_slots)
            .map_err(|_| anyhow::anyhow!("could not set up password hashing"))?;
        let rate_limits = RateLimits::new(RateLimitSettings {
            per_ip_per_minute: NonZeroU32::new(config.rate_limit_ip_per_minute),
            per_account_per_minute: NonZeroU32::new(config.rate_limit_account_per_minute),
        });
        let service = AuthService::new(store, tokens, passwords, lifetimes(&config)?, rate_limits);

        let router = http::router(build_schema(service, &config), edge_limits(&config)?);
        let address = SocketAddr::new(config.host, config.port);
        let listener = TcpListener::bind(address)
            .await
            .with_context(|| format!("could not listen on {address}"))?;
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGTERM or Ctrl-C, then finishes the requests in flight.
    pub async fn run_until_stopped(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        tracing::info!(address = %self.local_addr()?, "authql listening");
        axum::serve(
            self.listener,
            self.router
                .into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
    }
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
        max_body_bytes: config.max_body_bytes,
        max_query_bytes: config.graphql_max_query_bytes,
        max_query_nesting: config.graphql_max_nesting,
        request_timeout: Duration::from_secs(config.request_timeout_seconds),
        trusted_proxies,
    })
}

fn lifetimes(config: &Config) -> anyhow::Result<Lifetimes> {
    let seconds = |value: u64, setting: &str| {
        i64::try_from(value)
            .ok()
            .and_then(TimeDelta::try_seconds)
            .with_context(|| format!("{setting} is out of range"))
    };
    Ok(Lifetimes {
        access_token: seconds(config.jwt_access_token_expires, "JWT_ACCESS_TOKEN_EXPIRES")?,
        session: seconds(
            config.jwt_refresh_token_expires,
            "JWT_REFRESH_TOKEN_EXPIRES",
        )?,
        session_idle: seconds(config.session_idle_timeout, "SESSION_IDLE_TIMEOUT")?,
        refresh_reuse_grace: seconds(
            config.refresh_reuse_grace_seconds,
            "REFRESH_REUSE_GRACE_SECONDS",
        )?,
    })
}

/// The configured secret, or the one generated and kept in the database.
async fn jwt_secret(config: &Config, store: &dyn Store) -> anyhow::Result<Vec<u8>> {
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
