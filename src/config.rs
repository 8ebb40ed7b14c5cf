//! Every setting of authql, read from flags, the environment and `.env` (in that order of
//! precedence). `.env.example` lists them with their defaults.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum, builder::BoolishValueParser};
use secrecy::SecretString;

const DEFAULT_DATABASE_URL: &str = "sqlite://authql.db";
const DEFAULT_ACCESS_TOKEN_EXPIRES: u64 = 900;
const DEFAULT_REFRESH_TOKEN_EXPIRES: u64 = 30 * 24 * 3600;
const DEFAULT_ISSUER: &str = "authql";
const DEFAULT_LEEWAY_SECONDS: u64 = 5;
const DEFAULT_PORT: u16 = 8000;
const DEFAULT_BCRYPT_COST: u32 = 12;

#[derive(Debug, Parser)]
#[command(name = "authql", version, about = "A GraphQL authentication service")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub config: Config,
}

#[derive(Debug, Clone, Copy, Subcommand)]
pub enum Command {
    /// Serve the GraphQL API (the default).
    Serve,
    /// Print the GraphQL schema (SDL) to stdout.
    PrintSchema,
}

#[derive(Debug, Args)]
pub struct Config {
    /// Where users and sessions live: `sqlite://FILE` (created when missing) or `postgres://...`.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL)]
    pub database_url: String,

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

    /// Comma-separated PEM files of retired private keys (PKCS#8, Ed25519 or P-256): tokens they
    /// signed still verify, by `kid`, until they expire, but they never sign again. Private
    /// rather than public files, so that the same file moves from `JWT_PRIVATE_KEY_FILE` to here.
    /// An entry is `FILE` (known by its thumbprint) or `KID=FILE` for a key that signed under a
    /// `JWT_KEY_ID` of its own.
    #[arg(long, env = "JWT_RETIRED_KEY_FILES", value_delimiter = ',')]
    pub jwt_retired_key_files: Vec<String>,

    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "JWT_ACCESS_TOKEN_EXPIRES", default_value_t = DEFAULT_ACCESS_TOKEN_EXPIRES)]
    pub jwt_access_token_expires: u64,

    /// Lifetime of a session and its refresh token, in seconds, fixed at login: refreshing does
    /// not extend it.
    #[arg(long, env = "JWT_REFRESH_TOKEN_EXPIRES", default_value_t = DEFAULT_REFRESH_TOKEN_EXPIRES)]
    pub jwt_refresh_token_expires: u64,

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

    /// Apply pending database migrations at start-up.
    #[arg(long, env = "MIGRATE_ON_START", default_value = "true",
          value_parser = BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}

impl Config {
    /// Every setting at its documented default, ignoring flags and the environment (which
    /// `Cli::parse` would read): the base that tests adjust.
    pub fn defaults() -> Self {
        Config {
            database_url: DEFAULT_DATABASE_URL.into(),
            jwt_secret_key: None,
            jwt_algorithm: JwtAlgorithm::Hs256,
            jwt_private_key_file: None,
            jwt_key_id: None,
            jwt_retired_key_files: Vec::new(),
            jwt_access_token_expires: DEFAULT_ACCESS_TOKEN_EXPIRES,
            jwt_refresh_token_expires: DEFAULT_REFRESH_TOKEN_EXPIRES,
            jwt_issuer: DEFAULT_ISSUER.into(),
            jwt_leeway_seconds: DEFAULT_LEEWAY_SECONDS,
            host: IpAddr::from([127, 0, 0, 1]),
            port: DEFAULT_PORT,
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            bcrypt_max_concurrency: None,
            migrate_on_start: true,
        }
    }

    pub fn access_token_lifetime(&self) -> Duration {
        Duration::from_secs(self.jwt_access_token_expires)
    }

    pub fn refresh_token_lifetime(&self) -> Duration {
        Duration::from_secs(self.jwt_refresh_token_expires)
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

fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}
