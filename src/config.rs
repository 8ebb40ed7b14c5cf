//! Every setting of authql, read from flags, the environment and `.env` (in that order of
//! precedence). `.env.example` lists them with their defaults.

use std::{net::IpAddr, path::PathBuf};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::BoolishValueParser};
use secrecy::SecretString;

const DEFAULT_DATABASE_URL: &str = "sqlite://authql.db";
const DEFAULT_ACCESS_TOKEN_EXPIRES: u64 = 900;
const DEFAULT_REFRESH_TOKEN_EXPIRES: u64 = 30 * 24 * 3600;
const DEFAULT_ISSUER: &str = "authql";
const DEFAULT_LEEWAY_SECONDS: u64 = 5;
const DEFAULT_PORT: u16 = 8000;
const DEFAULT_BCRYPT_COST: u32 = 12;
const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;
const DEFAULT_GRAPHQL_MAX_QUERY_BYTES: usize = 16 * 1024;
const DEFAULT_GRAPHQL_MAX_NESTING: usize = 32;
const DEFAULT_GRAPHQL_MAX_DEPTH: usize = 15;
const DEFAULT_GRAPHQL_MAX_COMPLEXITY: usize = 1000;
const DEFAULT_GRAPHQL_MAX_ALIASES: usize = 15;
const DEFAULT_GRAPHQL_MAX_DIRECTIVES: usize = 5;
const DEFAULT_REQUEST_TIMEOUT_SECONDS: u64 = 30;
const DEFAULT_RATE_LIMIT_IP_PER_MINUTE: u32 = 60;
const DEFAULT_RATE_LIMIT_ACCOUNT_PER_MINUTE: u32 = 10;
const DEFAULT_RATE_LIMIT_IPV6_PREFIX: u8 = 64;
const DEFAULT_DATABASE_CONNECT_TIMEOUT_SECONDS: u64 = 5;
const DEFAULT_DATABASE_ACQUIRE_TIMEOUT_SECONDS: u64 = 5;
const DEFAULT_DATABASE_BUSY_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_PRUNE_INTERVAL_SECONDS: u64 = 600;
const DEFAULT_PRUNE_RETENTION_SECONDS: u64 = 24 * 3600;
const DEFAULT_PRUNE_BATCH_SIZE: u64 = 1000;
const DEFAULT_SESSION_IDLE_TIMEOUT: u64 = 7 * 24 * 3600;
const DEFAULT_REFRESH_REUSE_GRACE_SECONDS: u64 = 10;
const DEFAULT_CORS_MAX_AGE_SECONDS: u64 = 600;
const DEFAULT_PERSISTED_QUERIES_CACHE_SIZE: usize = 1000;
const DEFAULT_HEADER_READ_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = 10;
const DEFAULT_MAX_SESSIONS_PER_USER: u32 = 100;
const DEFAULT_MAIL_DIR: &str = "mail";
const DEFAULT_APP_NAME: &str = "authql";
const DEFAULT_REAUTHENTICATION_MAX_AGE: u64 = 300;
const DEFAULT_PASSWORD_RESET_TOKEN_EXPIRES: u64 = 3600;
const DEFAULT_EMAIL_VERIFICATION_TOKEN_EXPIRES: u64 = 24 * 3600;
const DEFAULT_RATE_LIMIT_MAILS_PER_ADDRESS_PER_HOUR: u32 = 5;
const DEFAULT_RATE_LIMIT_MAILS_PER_IP_PER_HOUR: u32 = 20;

#[derive(Debug, Parser)]
#[command(name = "authql", version, about = "A GraphQL authentication service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the GraphQL API (the default).
    Serve,
    /// Print the GraphQL schema (SDL) to stdout.
    PrintSchema {
        /// Print it as the Apollo Federation 2 subgraph that `FEDERATION=true` serves (what
        /// `_service { sdl }` answers), e.g. for `rover supergraph compose`.
        #[arg(long)]
        federation: bool,
    },
    /// Operator commands for incidents, against DATABASE_URL: list, end, disable, enable or
    /// delete a user's sessions and account.
    Admin(crate::admin::AdminArgs),
}

#[derive(Debug, Args)]
pub struct Config {
    /// Where users and sessions live: `sqlite://FILE` (created when missing), `postgres://...`
    /// or `mongodb://...` (also `mongodb+srv://`).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

    /// Most database connections open at once. By default one per CPU core for SQLite (WAL
    /// lets that many readers run beside the one writer) and 10 for PostgreSQL and MongoDB.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", value_parser = clap::value_parser!(u32).range(1..))]
    pub database_max_connections: Option<u32>,

    /// How long opening a database connection may take, in seconds.
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT_SECONDS", default_value_t = DEFAULT_DATABASE_CONNECT_TIMEOUT_SECONDS)]
    pub database_connect_timeout_seconds: u64,

    /// How long a request waits for a database connection (MongoDB: for a usable server) before
    /// it is answered SERVICE_UNAVAILABLE, in seconds.
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT_SECONDS", default_value_t = DEFAULT_DATABASE_ACQUIRE_TIMEOUT_SECONDS)]
    pub database_acquire_timeout_seconds: u64,

    /// SQLite: how long a write waits for the file's write lock held by another connection or
    /// process, in seconds, before the request is answered SERVICE_UNAVAILABLE.
    #[arg(long, env = "DATABASE_BUSY_TIMEOUT_SECONDS", default_value_t = DEFAULT_DATABASE_BUSY_TIMEOUT_SECONDS)]
    pub database_busy_timeout_seconds: u64,

    /// How often ended sessions are pruned, in seconds; 0 switches pruning off.
    #[arg(long, env = "PRUNE_INTERVAL_SECONDS", default_value_t = DEFAULT_PRUNE_INTERVAL_SECONDS)]
    pub prune_interval_seconds: u64,

    /// How long an ended session is kept before it is pruned, in seconds.
    #[arg(long, env = "PRUNE_RETENTION_SECONDS", default_value_t = DEFAULT_PRUNE_RETENTION_SECONDS)]
    pub prune_retention_seconds: u64,

    /// Most sessions deleted by one pruning statement.
    #[arg(long, env = "PRUNE_BATCH_SIZE", default_value_t = DEFAULT_PRUNE_BATCH_SIZE,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub prune_batch_size: u64,

    /// The HS256 key that signs tokens, at least 32 bytes. When unset, authql generates one on
    /// first start and keeps it in the database, so that every instance sharing it agrees.
    /// Not used with `JWT_ALGORITHM` EdDSA or ES256.
    #[arg(long, env = "JWT_SECRET_KEY", hide_env_values = true, value_parser = parse_secret)]
    pub jwt_secret_key: Option<SecretString>,

    /// How tokens are signed: HS256 with `JWT_SECRET_KEY`, or EdDSA (Ed25519) / ES256 (P-256)
    /// with `JWT_PRIVATE_KEY_FILE`. Tokens of any other algorithm are refused.
    #[arg(long, env = "JWT_ALGORITHM", value_enum, ignore_case = true, default_value_t = JwtAlgorithm::Hs256)]
    pub jwt_algorithm: JwtAlgorithm,

    /// The PEM file (PKCS#8, `BEGIN PRIVATE KEY`) of the key that signs tokens; required with
    /// EdDSA and ES256, refused with HS256.
    #[arg(long, env = "JWT_PRIVATE_KEY_FILE")]
    pub jwt_private_key_file: Option<PathBuf>,

    /// The `kid` of the EdDSA/ES256 signing key (refused with HS256, whose kid is derived from
    /// the secret). By default the key's RFC 7638 thumbprint, so that every instance with the
    /// same key agrees without being told.
    #[arg(long, env = "JWT_KEY_ID")]
    pub jwt_key_id: Option<String>,

    /// Comma-separated PEM files of verify-only private keys (PKCS#8, Ed25519 or P-256): tokens
    /// they signed verify, by `kid`, but they never sign. A key being retired (until the tokens
    /// it signed expire), or a key about to sign, listed on every instance first so that no
    /// instance refuses its tokens during a rolling deploy. Private rather than public files, so
    /// that the same file moves between here and `JWT_PRIVATE_KEY_FILE`. An entry is `FILE`
    /// (known by its thumbprint) or `KID=FILE` for a key that signs under a `JWT_KEY_ID` of its
    /// own. Allowed with every `JWT_ALGORITHM`.
    #[arg(long, env = "JWT_RETIRED_KEY_FILES", value_delimiter = ',')]
    pub jwt_retired_key_files: Vec<String>,

    /// Comma-separated verify-only HS256 secrets (at least 32 bytes each): tokens signed with
    /// them verify, never signed again; the HS256 twin of `JWT_RETIRED_KEY_FILES`, for rotating
    /// `JWT_SECRET_KEY` in two phases. Allowed with every `JWT_ALGORITHM`.
    #[arg(long, env = "JWT_RETIRED_SECRET_KEYS", hide_env_values = true, value_delimiter = ',',
          value_parser = parse_secret)]
    pub jwt_retired_secret_keys: Vec<SecretString>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "JWT_ACCESS_TOKEN_EXPIRES", default_value_t = DEFAULT_ACCESS_TOKEN_EXPIRES)]
    pub jwt_access_token_expires: u64,

    /// Lifetime of a session and its refresh token, in seconds, fixed at login: refreshing does
    /// not extend it.
    #[arg(long, env = "JWT_REFRESH_TOKEN_EXPIRES", default_value_t = DEFAULT_REFRESH_TOKEN_EXPIRES)]
    pub jwt_refresh_token_expires: u64,

    /// A session that is not refreshed for this many seconds ends (its tokens stop working).
    #[arg(long, env = "SESSION_IDLE_TIMEOUT", default_value_t = DEFAULT_SESSION_IDLE_TIMEOUT)]
    pub session_idle_timeout: u64,

    /// For this many seconds after a refresh, presenting the refresh token it replaced again
    /// (a second tab, a lost response) returns the very same new pair. Later, it is reuse: the
    /// session is revoked.
    #[arg(long, env = "REFRESH_REUSE_GRACE_SECONDS", default_value_t = DEFAULT_REFRESH_REUSE_GRACE_SECONDS)]
    pub refresh_reuse_grace_seconds: u64,

    /// The `iss` claim of issued tokens, and the only issuer accepted.
    #[arg(long, env = "JWT_ISSUER", default_value = DEFAULT_ISSUER)]
    pub jwt_issuer: String,

    /// Clock skew tolerated when checking `exp` and `nbf`, in seconds.
    #[arg(long, env = "JWT_LEEWAY_SECONDS", default_value_t = DEFAULT_LEEWAY_SECONDS,
          value_parser = clap::value_parser!(u64).range(0..=30))]
    pub jwt_leeway_seconds: u64,

    /// Address to listen on; 0.0.0.0 to accept connections from other machines.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,

    /// Port to listen on; 0 picks a free one.
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// bcrypt work factor for password hashes (4 to 31; each step doubles the work).
    #[arg(long, env = "BCRYPT_COST", default_value_t = DEFAULT_BCRYPT_COST,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,

    /// How many password hashes may run at once; by default one per CPU core.
    #[arg(long, env = "BCRYPT_MAX_CONCURRENCY")]
    pub bcrypt_max_concurrency: Option<usize>,

    /// How many password hashes may wait for a free hashing thread; more are answered
    /// SERVICE_UNAVAILABLE with `Retry-After` at once. By default 16 per hashing thread.
    #[arg(long, env = "BCRYPT_MAX_QUEUE", value_parser = clap::value_parser!(u64).range(1..))]
    pub bcrypt_max_queue: Option<u64>,

    /// Largest request body accepted, in bytes (413 beyond, checked while reading).
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,

    /// Longest GraphQL query text accepted, in bytes.
    #[arg(long, env = "GRAPHQL_MAX_QUERY_BYTES", default_value_t = DEFAULT_GRAPHQL_MAX_QUERY_BYTES)]
    pub graphql_max_query_bytes: usize,

    /// Deepest nesting of brackets and braces in a query's text, checked before parsing.
    #[arg(long, env = "GRAPHQL_MAX_NESTING", default_value_t = DEFAULT_GRAPHQL_MAX_NESTING)]
    pub graphql_max_nesting: usize,

    /// Deepest selection nesting of an operation.
    #[arg(long, env = "GRAPHQL_MAX_DEPTH", default_value_t = DEFAULT_GRAPHQL_MAX_DEPTH)]
    pub graphql_max_depth: usize,

    /// Highest complexity of an operation: a field costs 1; `register`, `login`, `refresh` and
    /// `changePassword` cost 500 each, so no operation holds two of them. Also the most
    /// selections a document may make once its fragments are expanded.
    #[arg(long, env = "GRAPHQL_MAX_COMPLEXITY", default_value_t = DEFAULT_GRAPHQL_MAX_COMPLEXITY)]
    pub graphql_max_complexity: usize,

    /// Most aliased fields in one request.
    #[arg(long, env = "GRAPHQL_MAX_ALIASES", default_value_t = DEFAULT_GRAPHQL_MAX_ALIASES)]
    pub graphql_max_aliases: usize,

    /// Most directives in any one place of a query: an operation, a variable definition, a
    /// field, a fragment, a fragment spread or an inline fragment.
    #[arg(long, env = "GRAPHQL_MAX_DIRECTIVES", default_value_t = DEFAULT_GRAPHQL_MAX_DIRECTIVES)]
    pub graphql_max_directives: usize,

    /// Schema introspection and "did you mean" suggestions; turn off in production.
    #[arg(long, env = "GRAPHQL_INTROSPECTION", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub graphql_introspection: bool,

    /// Serve the schema as an Apollo Federation 2 subgraph: `User @key(fields: "id")`,
    /// `Query._entities` (which resolves only the signed-in caller's own `User`) and
    /// `Query._service { sdl }` (the subgraph SDL with its `@link` to the federation spec, answered
    /// even with GRAPHQL_INTROSPECTION off, as a router composes from it). Off: the schema is
    /// exactly `authql print-schema`, with no federation fields or directives.
    #[arg(long, env = "FEDERATION", default_value = "false",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub federation: bool,

    /// A request still running after this many seconds is stopped and answered 503.
    #[arg(long, env = "REQUEST_TIMEOUT_SECONDS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECONDS)]
    pub request_timeout_seconds: u64,

    /// A connection must send a whole request head within this many seconds of being accepted
    /// or of its last answer, or it is closed (slowloris; also how long an idle kept-alive
    /// connection stays open); a write to a client that does not read is given as long.
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECONDS", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub header_read_timeout_seconds: u64,

    /// Most client connections open at once, WebSockets included; more wait until one closes.
    /// By default the process's open-file limit less 64 (kept for the database and logs), at
    /// most 10,000.
    #[arg(long, env = "MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_connections: Option<u64>,

    /// On SIGTERM: how long requests in flight may take to finish, in seconds. Idle
    /// connections and ones still sending their request head are closed at once, WebSockets
    /// get a close frame (1001).
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECONDS", default_value_t = DEFAULT_SHUTDOWN_TIMEOUT_SECONDS)]
    pub shutdown_timeout_seconds: u64,

    /// Most sessions one user may have; a login beyond it ends the user's least recently used
    /// session (a REVOKED event).
    #[arg(long, env = "MAX_SESSIONS_PER_USER", default_value_t = DEFAULT_MAX_SESSIONS_PER_USER,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_sessions_per_user: u32,

    /// Attempts per minute at each of login, register, refresh and changePassword from one
    /// client address; 0 switches the limit off.
    #[arg(long, env = "RATE_LIMIT_IP_PER_MINUTE", default_value_t = DEFAULT_RATE_LIMIT_IP_PER_MINUTE)]
    pub rate_limit_ip_per_minute: u32,

    /// Attempts per minute at one account (login name for login, user for changePassword,
    /// session for refresh) from one client address; 0 switches the limit off.
    #[arg(long, env = "RATE_LIMIT_ACCOUNT_PER_MINUTE", default_value_t = DEFAULT_RATE_LIMIT_ACCOUNT_PER_MINUTE)]
    pub rate_limit_account_per_minute: u32,

    /// IPv6 clients are rate-limited per network of this prefix length (a host is commonly
    /// given a whole /64); sessions still record the full address.
    #[arg(long, env = "RATE_LIMIT_IPV6_PREFIX", default_value_t = DEFAULT_RATE_LIMIT_IPV6_PREFIX,
          value_parser = clap::value_parser!(u8).range(0..=128))]
    pub rate_limit_ipv6_prefix: u8,

    /// Proxies (addresses or CIDR ranges, comma-separated) whose `Forwarded` or
    /// `X-Forwarded-For` header names the client (read from the right, skipping these
    /// proxies); from anyone else the headers are ignored.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<String>,

    /// Origins that browsers may call authql from (CORS), comma-separated, each exactly
    /// `scheme://host[:port]` (e.g. `https://app.example.com,http://localhost:5173`). Credentials
    /// (cookies) are allowed for these origins only; `*` is refused. Empty (the default) sends no
    /// CORS headers at all. The cookie-held refresh token is accepted only from these origins
    /// and authql's own.
    #[arg(long, env = "CORS_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub cors_allowed_origins: Vec<String>,

    /// How long a browser may reuse a CORS preflight answer, in seconds.
    #[arg(long, env = "CORS_MAX_AGE_SECONDS", default_value_t = DEFAULT_CORS_MAX_AGE_SECONDS)]
    pub cors_max_age_seconds: u64,

    /// The GraphiQL page at `/` (its assets are served by authql itself); off makes `/` a 404.
    /// Turn off in production together with GRAPHQL_INTROSPECTION.
    #[arg(long, env = "GRAPHIQL", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub graphiql: bool,

    /// Most queries kept for automatic persisted queries (Apollo's protocol), least recently
    /// used dropped first; 0 switches them off.
    #[arg(long, env = "PERSISTED_QUERIES_CACHE_SIZE", default_value_t = DEFAULT_PERSISTED_QUERIES_CACHE_SIZE)]
    pub persisted_queries_cache_size: usize,

    /// Keep the refresh token in an HttpOnly cookie instead of the response body: `register`,
    /// `login` and `refresh` set it, `refresh` without an argument reads it, `logout` clears it.
    #[arg(long, env = "REFRESH_TOKEN_COOKIE", default_value = "false",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub refresh_token_cookie: bool,

    /// The refresh cookie is `Secure` and named `__Secure-authql_refresh`; false (plain-http
    /// development only) drops both.
    #[arg(long, env = "REFRESH_TOKEN_COOKIE_SECURE", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub refresh_token_cookie_secure: bool,

    /// The refresh cookie's SameSite: Strict (the default; the frontend is on authql's site),
    /// Lax, or None (a frontend on another site; needs Secure, and then rests on the Origin
    /// check against CORS_ALLOWED_ORIGINS).
    #[arg(long, env = "REFRESH_TOKEN_COOKIE_SAME_SITE", value_enum, ignore_case = true, default_value_t = SameSite::Strict)]
    pub refresh_token_cookie_same_site: SameSite,

    /// Apply pending database migrations at start-up.
    #[arg(long, env = "MIGRATE_ON_START", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,

    /// WebSocket (`sessionEvents`): seconds a new connection may take to send `connection_init`
    /// before it is closed with 4408.
    #[arg(long, env = "WEBSOCKET_INIT_TIMEOUT_SECONDS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub websocket_init_timeout_seconds: u64,

    /// WebSocket: seconds between the server's pings; a connection that sends nothing (not even
    /// a pong) for three of them is closed.
    #[arg(long, env = "WEBSOCKET_PING_INTERVAL_SECONDS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub websocket_ping_interval_seconds: u64,

    /// WebSocket: most subscriptions open at once on one connection.
    #[arg(long, env = "WEBSOCKET_MAX_SUBSCRIPTIONS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub websocket_max_subscriptions: u64,

    /// WebSocket: most connections open at once for one user, on this instance.
    #[arg(long, env = "WEBSOCKET_MAX_CONNECTIONS_PER_USER", default_value_t = 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub websocket_max_connections_per_user: u64,

    /// How log lines are written: `text` (one readable line per event) or `json` (one JSON
    /// object per line, for a log collector).
    #[arg(long, env = "LOG_FORMAT", value_enum, ignore_case = true, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The SMTP server mails go through: `smtp://[user:pass@]host[:port]` (STARTTLS whenever
    /// the server offers it; `?tls=required` refuses one that does not, `?tls=none` never asks)
    /// or `smtps://[user:pass@]host[:port]` (TLS from the start). Ports default to 587 and 465;
    /// percent-encode `@`, `:` and `/` in the user and password. When unset, every mail is
    /// written as an `.eml` file into `MAIL_DIR` instead: for development only.
    #[arg(long, env = "SMTP_URL", hide_env_values = true, value_parser = parse_secret)]
    pub smtp_url: Option<SecretString>,

    /// A PEM file of certificates trusted besides the public roots when talking TLS to the
    /// SMTP server (a private CA).
    #[arg(long, env = "SMTP_TLS_CA_FILE")]
    pub smtp_tls_ca_file: Option<PathBuf>,

    /// The sender of every mail, `Name <address>` or `address`. By default `APP_NAME
    /// <noreply@HOST>`, HOST being PUBLIC_URL's host.
    #[arg(long, env = "MAIL_FROM")]
    pub mail_from: Option<String>,

    /// Where mails are written as `.eml` files when SMTP_URL is unset (created owner-only).
    #[arg(long, env = "MAIL_DIR", default_value = DEFAULT_MAIL_DIR)]
    pub mail_dir: PathBuf,

    /// A directory whose files replace the embedded mail templates of the same name
    /// (`password_reset.txt`, `password_reset.html`, ..., `layout.html`; README, "Accounts").
    #[arg(long, env = "MAIL_TEMPLATES_DIR")]
    pub mail_templates_dir: Option<PathBuf>,

    /// Where clients reach authql, e.g. `https://auth.example.com`: the base of the links in
    /// mails. By default `http://HOST:PORT` (`localhost` for an unspecified HOST).
    #[arg(long, env = "PUBLIC_URL")]
    pub public_url: Option<String>,

    /// The app's own password-reset page, holding `token={token}` in its query or fragment,
    /// e.g. `https://app.example.com/reset-password#token={token}`. By default authql's page
    /// `PUBLIC_URL/reset-password`.
    #[arg(long, env = "PASSWORD_RESET_URL")]
    pub password_reset_url: Option<String>,

    /// The app's own email-verification page, holding `token={token}` in its query or
    /// fragment. By default authql's page `PUBLIC_URL/verify-email`.
    #[arg(long, env = "EMAIL_VERIFICATION_URL")]
    pub email_verification_url: Option<String>,

    /// Whether addresses are verified: `off` (nothing is mailed at registration), `optional`
    /// (registration mails a link; login works without it) or `required` (no session until
    /// the address is verified: register and login answer EMAIL_NOT_VERIFIED).
    #[arg(long, env = "EMAIL_VERIFICATION", value_enum, ignore_case = true, default_value_t = EmailVerification::Optional)]
    pub email_verification: EmailVerification,

    /// How long a password-reset link works, in seconds.
    #[arg(long, env = "PASSWORD_RESET_TOKEN_EXPIRES", default_value_t = DEFAULT_PASSWORD_RESET_TOKEN_EXPIRES,
          value_parser = clap::value_parser!(u64).range(60..))]
    pub password_reset_token_expires: u64,

    /// How long an email-verification (or email-change) link works, in seconds.
    #[arg(long, env = "EMAIL_VERIFICATION_TOKEN_EXPIRES", default_value_t = DEFAULT_EMAIL_VERIFICATION_TOKEN_EXPIRES,
          value_parser = clap::value_parser!(u64).range(60..))]
    pub email_verification_token_expires: u64,

    /// The app's name, in the mails' subjects and bodies.
    #[arg(long, env = "APP_NAME", default_value = DEFAULT_APP_NAME)]
    pub app_name: String,

    /// Most mails to one address in an hour (password resets, verification links, email
    /// changes and notices together), whoever asks; beyond, RATE_LIMITED (or, where an answer
    /// must not tell, no mail). 0 switches the limit off.
    #[arg(long, env = "RATE_LIMIT_MAILS_PER_ADDRESS_PER_HOUR", default_value_t = DEFAULT_RATE_LIMIT_MAILS_PER_ADDRESS_PER_HOUR)]
    pub rate_limit_mails_per_address_per_hour: u32,

    /// Most mails one client address may cause in an hour, to any addresses; 0 switches the
    /// limit off.
    #[arg(long, env = "RATE_LIMIT_MAILS_PER_IP_PER_HOUR", default_value_t = DEFAULT_RATE_LIMIT_MAILS_PER_IP_PER_HOUR)]
    pub rate_limit_mails_per_ip_per_hour: u32,

    /// Where `GET /metrics` (Prometheus text format) is served: a listen address of its own
    /// such as `127.0.0.1:9100`, kept off the public port; when unset, metrics are not served.
    #[arg(long, env = "METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,

    /// The WebAuthn relying party id passkeys are bound to (WebAuthn Level 3 § 5.1.2): a
    /// domain, e.g. `example.com`, that every origin in WEBAUTHN_ORIGINS is or is under. By
    /// default the host of PUBLIC_URL (`localhost` when PUBLIC_URL is unset). It cannot change
    /// once passkeys exist: they work only with the id they were made for.
    #[arg(long, env = "WEBAUTHN_RP_ID")]
    pub webauthn_rp_id: Option<String>,

    /// The name an authenticator shows for the relying party; by default APP_NAME.
    #[arg(long, env = "WEBAUTHN_RP_NAME")]
    pub webauthn_rp_name: Option<String>,

    /// The origins (scheme://host[:port]) whose pages may register and use passkeys,
    /// comma-separated; by default PUBLIC_URL's origin plus CORS_ALLOWED_ORIGINS.
    #[arg(long, env = "WEBAUTHN_ORIGINS", value_delimiter = ',')]
    pub webauthn_origins: Vec<String>,

    /// Seconds a session's last proof of identity (a login, `reauthenticate`) counts as recent
    /// for what changes how the account is proven (second factors, passkeys); older:
    /// REAUTHENTICATION_REQUIRED.
    #[arg(long, env = "REAUTHENTICATION_MAX_AGE", default_value_t = DEFAULT_REAUTHENTICATION_MAX_AGE,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub reauthentication_max_age: u64,

    /// A file holding a minijinja template that renders a JSON object of claims added to every
    /// access token (with `user`, `session`, `amr`; values written as JSON); checked at start
    /// (README, "Roles and custom claims").
    #[arg(long, env = "ACCESS_TOKEN_CLAIMS_TEMPLATE")]
    pub access_token_claims_template: Option<PathBuf>,

    /// The resource servers that may call `POST /oauth/introspect` (RFC 7662), as
    /// comma-separated `client_id:client_secret` pairs, authenticated with HTTP Basic; unset:
    /// the endpoint answers 401 to everyone.
    #[arg(long, env = "INTROSPECTION_CLIENTS", hide_env_values = true, value_delimiter = ',',
          value_parser = parse_introspection_client)]
    pub introspection_clients: Vec<IntrospectionClient>,

    /// Webhook endpoints, comma-separated absolute `http(s)` URLs: each gets every event
    /// (`user.created`, `user.deleted`, `user.email_changed`, `session.created`,
    /// `session.revoked`), signed as Standard Webhooks says, through the outbox (retried for 3
    /// days). Unset: no webhooks, nothing queued.
    #[arg(long, env = "WEBHOOK_URLS", value_delimiter = ',')]
    pub webhook_urls: Vec<String>,

    /// The Standard Webhooks signing secret: `whsec_` + base64 of 24 to 64 random bytes
    /// (`echo whsec_$(openssl rand -base64 32)`); required with WEBHOOK_URLS.
    #[arg(long, env = "WEBHOOK_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub webhook_secret: Option<SecretString>,

    /// The OpenID Connect providers people may sign in with, comma-separated names (ASCII
    /// letters, digits and `_`; `google,gitlab`). Each is set by `OIDC_<NAME>_ISSUER`,
    /// `OIDC_<NAME>_CLIENT_ID`, `OIDC_<NAME>_CLIENT_SECRET`, `OIDC_<NAME>_SCOPES` (default
    /// `openid email profile`) and `OIDC_<NAME>_DISPLAY_NAME` (README, "Sign in with OpenID
    /// Connect"). authql's redirect URI at each provider is `PUBLIC_URL/auth/oidc/callback`.
    #[arg(long, env = "OIDC_PROVIDERS", value_delimiter = ',')]
    pub oidc_providers: Vec<String>,

    /// The app's pages that an OpenID Connect sign-in may return to (`beginOidcLogin`'s
    /// `redirectUri`), comma-separated absolute URLs, matched exactly.
    #[arg(long, env = "OIDC_REDIRECT_URIS", value_delimiter = ',')]
    pub oidc_redirect_uris: Vec<String>,

    /// Each provider's settings, read from `OIDC_<NAME>_*` by
    /// [`Config::read_oidc_provider_settings`] (their names depend on OIDC_PROVIDERS, so they
    /// cannot be flags of their own). Tests set them directly.
    #[arg(skip)]
    pub oidc_provider_settings: Vec<OidcProviderSettings>,
}

/// One OpenID Connect provider's settings (`OIDC_<NAME>_*`).
#[derive(Debug, Clone)]
pub struct OidcProviderSettings {
    /// The name in OIDC_PROVIDERS, lower-cased: what `beginOidcLogin` and
    /// `unlinkIdentity` take.
    pub name: String,
    /// `OIDC_<NAME>_DISPLAY_NAME`; by default the name.
    pub display_name: String,
    /// `OIDC_<NAME>_ISSUER`: an `https://` URL (`http://` only on a loopback address).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: SecretString,
    /// `OIDC_<NAME>_SCOPES`, space- or comma-separated; `openid` is always asked for.
    pub scopes: Vec<String>,
}

/// The scopes asked for when `OIDC_<NAME>_SCOPES` is unset.
pub const DEFAULT_OIDC_SCOPES: &str = "openid email profile";

impl Config {
    /// Reads each OIDC_PROVIDERS name's `OIDC_<NAME>_*` settings through `lookup` (the
    /// environment, after `.env`) into `oidc_provider_settings`. Errors say which setting is
    /// missing or wrong.
    pub fn read_oidc_provider_settings(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), String> {
        let mut settings = Vec::new();
        for name in self.oidc_providers.iter().map(|name| name.trim()) {
            if name.is_empty() {
                continue;
            }
            if name.len() > 32 || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "OIDC_PROVIDERS: {name:?} is not 1 to 32 ASCII letters, digits or _"
                ));
            }
            let prefix = format!("OIDC_{}_", name.to_ascii_uppercase());
            let setting = |key: &str| {
                lookup(&format!("{prefix}{key}"))
                    .map(|value| value.trim().to_owned())
                    .filter(|value| !value.is_empty())
            };
            let required = |key: &str| {
                setting(key).ok_or_else(|| {
                    format!("{prefix}{key} must be set (OIDC_PROVIDERS names {name:?})")
                })
            };
            let name = name.to_ascii_lowercase();
            if settings
                .iter()
                .any(|known: &OidcProviderSettings| known.name == name)
            {
                return Err(format!("OIDC_PROVIDERS names {name:?} twice"));
            }
            settings.push(OidcProviderSettings {
                display_name: setting("DISPLAY_NAME").unwrap_or_else(|| name.clone()),
                issuer: required("ISSUER")?,
                client_id: required("CLIENT_ID")?,
                client_secret: SecretString::from(required("CLIENT_SECRET")?),
                scopes: setting("SCOPES")
                    .unwrap_or_else(|| DEFAULT_OIDC_SCOPES.to_owned())
                    .split([' ', ','])
                    .filter(|scope| !scope.is_empty())
                    .map(str::to_owned)
                    .collect(),
                name,
            });
        }
        self.oidc_provider_settings = settings;
        Ok(())
    }
}

/// One `INTROSPECTION_CLIENTS` entry: a client id and its secret.
#[derive(Debug, Clone)]
pub struct IntrospectionClient {
    pub id: String,
    pub secret: SecretString,
}

/// Shortest introspection client secret, in bytes: RFC 7662 § 4 asks for strong client
/// authentication, and a secret is all there is here.
pub const MIN_INTROSPECTION_SECRET_BYTES: usize = 16;

fn parse_introspection_client(value: &str) -> Result<IntrospectionClient, String> {
    let (id, secret) = value
        .trim()
        .split_once(':')
        .ok_or("each client is id:secret")?;
    // RFC 7617 § 2: a user-id holding a colon cannot be sent with HTTP Basic.
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_graphic()) {
        return Err("a client id is printable ASCII without spaces or colons".into());
    }
    if secret.len() < MIN_INTROSPECTION_SECRET_BYTES {
        return Err(format!(
            "the secret of client {id:?} is shorter than {MIN_INTROSPECTION_SECRET_BYTES} bytes"
        ));
    }
    Ok(IntrospectionClient {
        id: id.to_owned(),
        secret: SecretString::from(secret),
    })
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line (tracing-subscriber's JSON format).
    Json,
}

impl Config {
    /// Every setting at its documented default, ignoring flags and the environment (which
    /// `Cli::parse` would read): the base that tests adjust.
    pub fn defaults() -> Self {
        Config {
            database_url: DEFAULT_DATABASE_URL.into(),
            database_max_connections: None,
            database_connect_timeout_seconds: DEFAULT_DATABASE_CONNECT_TIMEOUT_SECONDS,
            database_acquire_timeout_seconds: DEFAULT_DATABASE_ACQUIRE_TIMEOUT_SECONDS,
            database_busy_timeout_seconds: DEFAULT_DATABASE_BUSY_TIMEOUT_SECONDS,
            prune_interval_seconds: DEFAULT_PRUNE_INTERVAL_SECONDS,
            prune_retention_seconds: DEFAULT_PRUNE_RETENTION_SECONDS,
            prune_batch_size: DEFAULT_PRUNE_BATCH_SIZE,
            jwt_secret_key: None,
            jwt_algorithm: JwtAlgorithm::Hs256,
            jwt_private_key_file: None,
            jwt_key_id: None,
            jwt_retired_key_files: Vec::new(),
            jwt_retired_secret_keys: Vec::new(),
            jwt_access_token_expires: DEFAULT_ACCESS_TOKEN_EXPIRES,
            jwt_refresh_token_expires: DEFAULT_REFRESH_TOKEN_EXPIRES,
            session_idle_timeout: DEFAULT_SESSION_IDLE_TIMEOUT,
            refresh_reuse_grace_seconds: DEFAULT_REFRESH_REUSE_GRACE_SECONDS,
            jwt_issuer: DEFAULT_ISSUER.into(),
            jwt_leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            host: IpAddr::from([127, 0, 0, 1]),
            port: DEFAULT_PORT,
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            bcrypt_max_concurrency: None,
            bcrypt_max_queue: None,
            migrate_on_start: true,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            graphql_max_query_bytes: DEFAULT_GRAPHQL_MAX_QUERY_BYTES,
            graphql_max_nesting: DEFAULT_GRAPHQL_MAX_NESTING,
            graphql_max_depth: DEFAULT_GRAPHQL_MAX_DEPTH,
            graphql_max_complexity: DEFAULT_GRAPHQL_MAX_COMPLEXITY,
            graphql_max_aliases: DEFAULT_GRAPHQL_MAX_ALIASES,
            graphql_max_directives: DEFAULT_GRAPHQL_MAX_DIRECTIVES,
            graphql_introspection: true,
            federation: false,
            request_timeout_seconds: DEFAULT_REQUEST_TIMEOUT_SECONDS,
            header_read_timeout_seconds: DEFAULT_HEADER_READ_TIMEOUT_SECONDS,
            max_connections: None,
            shutdown_timeout_seconds: DEFAULT_SHUTDOWN_TIMEOUT_SECONDS,
            max_sessions_per_user: DEFAULT_MAX_SESSIONS_PER_USER,
            trusted_proxies: Vec::new(),
            rate_limit_ip_per_minute: DEFAULT_RATE_LIMIT_IP_PER_MINUTE,
            rate_limit_account_per_minute: DEFAULT_RATE_LIMIT_ACCOUNT_PER_MINUTE,
            rate_limit_ipv6_prefix: DEFAULT_RATE_LIMIT_IPV6_PREFIX,
            cors_allowed_origins: Vec::new(),
            cors_max_age_seconds: DEFAULT_CORS_MAX_AGE_SECONDS,
            graphiql: true,
            persisted_queries_cache_size: DEFAULT_PERSISTED_QUERIES_CACHE_SIZE,
            refresh_token_cookie: false,
            refresh_token_cookie_secure: true,
            refresh_token_cookie_same_site: SameSite::Strict,
            log_format: LogFormat::Text,
            metrics_addr: None,
            websocket_init_timeout_seconds: 10,
            websocket_ping_interval_seconds: 15,
            websocket_max_subscriptions: 10,
            websocket_max_connections_per_user: 20,
            smtp_url: None,
            smtp_tls_ca_file: None,
            mail_from: None,
            mail_dir: PathBuf::from(DEFAULT_MAIL_DIR),
            mail_templates_dir: None,
            public_url: None,
            password_reset_url: None,
            email_verification_url: None,
            email_verification: EmailVerification::Optional,
            password_reset_token_expires: DEFAULT_PASSWORD_RESET_TOKEN_EXPIRES,
            email_verification_token_expires: DEFAULT_EMAIL_VERIFICATION_TOKEN_EXPIRES,
            app_name: DEFAULT_APP_NAME.into(),
            webauthn_rp_id: None,
            webauthn_rp_name: None,
            webauthn_origins: Vec::new(),
            reauthentication_max_age: DEFAULT_REAUTHENTICATION_MAX_AGE,
            access_token_claims_template: None,
            introspection_clients: Vec::new(),
            rate_limit_mails_per_address_per_hour: DEFAULT_RATE_LIMIT_MAILS_PER_ADDRESS_PER_HOUR,
            rate_limit_mails_per_ip_per_hour: DEFAULT_RATE_LIMIT_MAILS_PER_IP_PER_HOUR,
            webhook_urls: Vec::new(),
            webhook_secret: None,
            oidc_providers: Vec::new(),
            oidc_redirect_uris: Vec::new(),
            oidc_provider_settings: Vec::new(),
        }
    }
}

/// The signing algorithms authql offers. Each key verifies only its own algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret; the default.
    #[value(name = "HS256")]
    Hs256,
    /// Ed25519 signatures (RFC 8037).
    #[value(name = "EdDSA")]
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    #[value(name = "ES256")]
    Es256,
}

/// Whether an account's address must be verified (`EMAIL_VERIFICATION`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EmailVerification {
    /// Nothing is mailed at registration; `sendVerificationEmail` still works.
    Off,
    /// Registration mails a link; an unverified account works all the same.
    Optional,
    /// No session for an unverified account: register and login answer EMAIL_NOT_VERIFIED
    /// (and mail a link), and registering a taken address answers the same.
    Required,
}

/// The `SameSite` attribute of the refresh cookie (RFC 6265bis § 4.1.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SameSite {
    /// Sent only with requests from authql's own site.
    Strict,
    /// Also sent on top-level navigations from other sites.
    Lax,
    /// Sent from any site; browsers require `Secure` with it.
    None,
}

/// Applies the settings of the `.env` file at `path`, all of them or none: the whole file is
/// parsed before any variable is set, and a variable already in the environment wins. A missing
/// file is no error. Errors: a file that cannot be read, or a line that does not parse, named by
/// its number and variable, never its value (it may be a secret).
pub fn load_dotenv(path: &std::path::Path) -> Result<(), String> {
    let shown = path.display();
    let entries = match dotenvy::from_path_iter(path) {
        Ok(entries) => entries,
        Err(error) if error.not_found() => return Ok(()),
        Err(_) => {
            return Err(format!(
                "{shown} cannot be read; nothing from it was applied"
            ));
        }
    };
    for entry in entries {
        match entry {
            Ok(_) => {}
            Err(dotenvy::Error::LineParse(..)) => {
                // dotenvy's error holds the rest of the broken line, which may be a secret:
                // find the line by parsing ever longer prefixes of the file instead.
                let text = std::fs::read_to_string(path).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let broken = (1..=lines.len()).find(|&count| {
                    let prefix = lines[..count].join("\n");
                    dotenvy::from_read_iter(prefix.as_bytes()).any(|entry| entry.is_err())
                });
                // Only the variable's name, never more of the line.
                let (number, name) = broken.map_or(("?".to_owned(), String::new()), |count| {
                    let name = lines[count - 1]
                        .trim_start()
                        .trim_start_matches("export ")
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    (count.to_string(), name)
                });
                return Err(format!(
                    "{shown} line {number} ({name}) does not parse: a line is NAME=value, a value with spaces needs quotes, and a quote must close; nothing from {shown} was applied"
                ));
            }
            Err(_) => {
                return Err(format!(
                    "{shown} does not parse; nothing from it was applied"
                ));
            }
        }
    }
    dotenvy::from_path(path).map_err(|_| format!("{shown} could not be applied"))
}

fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every setting is documented where operators look: a row of the README's settings table,
    /// and a line of `.env.example` (commented out when it has no default).
    #[test]
    fn every_setting_is_in_the_readme_table_and_in_the_env_example() {
        let readme = include_str!("../README.md");
        let example = include_str!("../.env.example");
        let table = &readme[readme.find("\n## Settings").expect("the Settings section")..];
        let mut checked = 0;
        for argument in Cli::command().get_arguments() {
            let Some(name) = argument.get_env().and_then(|name| name.to_str()) else {
                continue;
            };
            assert!(
                table.contains(&format!("| `{name}` |")),
                "{name} has no row in the README's settings table"
            );
            assert!(
                example.contains(&format!("\n{name}=")) || example.contains(&format!("# {name}=")),
                "{name} is not in .env.example"
            );
            checked += 1;
        }
        assert!(checked > 60, "only {checked} settings found");
    }
}
