//! Automatic persisted queries, Apollo's protocol (version 1), as `PersistedQueryLink` speaks it:
//!
//! 1. The client sends only `extensions.persistedQuery.sha256Hash` (lower-case hex SHA-256 of
//!    the query text). An unknown hash is answered with the error `PersistedQueryNotFound`,
//!    code `PERSISTED_QUERY_NOT_FOUND`, status 200.
//! 2. The client sends the hash and the query. A hash that is not the query's SHA-256 is refused
//!    (`PERSISTED_QUERY_HASH_MISMATCH`); otherwise the query is kept.
//! 3. From then on the hash alone runs the query, by POST or, for queries, by GET.
//!
//! The store is an LRU of at most `PERSISTED_QUERIES_CACHE_SIZE` entries, each no longer than
//! `GRAPHQL_MAX_QUERY_BYTES`. It keeps query *text*, so that a stored query passes every check a
//! sent one does (size, nesting, GET-carries-no-mutation, aliases, depth, complexity).
//!
//! async-graphql's own `ApolloPersistedQueries` extension stores parsed documents and hands them
//! to the executor pre-parsed, which would skip those checks; hence this edge-side version.

use std::{num::NonZeroUsize, sync::Mutex};

use lru::LruCache;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::graphql_over_http::{HttpError, MediaType};

/// The only version of the protocol there is.
const PROTOCOL_VERSION: u64 = 1;

/// Queries known by their SHA-256; `None` when persisted queries are switched off.
pub struct PersistedQueries {
    cache: Option<Mutex<LruCache<[u8; 32], String>>>,
}

/// What a request's `extensions.persistedQuery` asks for.
pub enum Lookup {
    /// No persisted query: the request's own `query` runs.
    NotPersisted,
    /// The stored query for this hash runs.
    Stored(String),
    /// The request's query runs and is stored under this hash once it passes the edge's checks.
    Register([u8; 32]),
}

impl PersistedQueries {
    /// A store of at most `capacity` queries; 0 switches automatic persisted queries off (a
    /// hash is then answered `PERSISTED_QUERY_NOT_SUPPORTED`, and Apollo's link stops sending
    /// hashes).
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: NonZeroUsize::new(capacity).map(|capacity| Mutex::new(LruCache::new(capacity))),
        }
    }

    /// Reads `extensions.persistedQuery` next to `query`. Errors: `PERSISTED_QUERY_NOT_FOUND`
    /// (a hash alone that is not stored), `PERSISTED_QUERY_NOT_SUPPORTED` (switched off),
    /// `PERSISTED_QUERY_HASH_MISMATCH` (400, a hash that is not the query's), `BAD_REQUEST` (400,
    /// an extension of another shape or version).
    pub fn lookup(
        &self,
        extensions: Option<&Map<String, Value>>,
        query: Option<&str>,
        media: MediaType,
    ) -> Result<Lookup, HttpError> {
        let Some(extension) = extensions.and_then(|extensions| extensions.get("persistedQuery"))
        else {
            return Ok(Lookup::NotPersisted);
        };
        let Some(cache) = &self.cache else {
            return Err(HttpError::request(
                media,
                "PERSISTED_QUERY_NOT_SUPPORTED",
                "PersistedQueryNotSupported",
            ));
        };
        let malformed = || {
            HttpError::bad_parameters(
                media,
                "extensions.persistedQuery must be {\"version\": 1, \"sha256Hash\": \"<64 hex digits>\"}",
            )
        };
        if extension.get("version").and_then(Value::as_u64) != Some(PROTOCOL_VERSION) {
            return Err(malformed());
        }
        let hash = extension
            .get("sha256Hash")
            .and_then(Value::as_str)
            .and_then(parse_hash)
            .ok_or_else(malformed)?;
        match query {
            Some(query) if !query.is_empty() => {
                let digest: [u8; 32] = Sha256::digest(query.as_bytes()).into();
                if digest != hash {
                    return Err(HttpError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "PERSISTED_QUERY_HASH_MISMATCH",
                        "extensions.persistedQuery.sha256Hash is not the SHA-256 of the query",
                    )
                    .in_media(media));
                }
                Ok(Lookup::Register(hash))
            }
            _ => {
                let stored = lock(cache).get(&hash).cloned();
                stored.map(Lookup::Stored).ok_or_else(|| {
                    // Status 200 in both media types, as Apollo Server answers it, so that every
                    // version of PersistedQueryLink reads it as a GraphQL error and retries.
                    HttpError::request(media, "PERSISTED_QUERY_NOT_FOUND", "PersistedQueryNotFound")
                        .with_status(axum::http::StatusCode::OK)
                })
            }
        }
    }

    /// Keeps `query` under `hash`, evicting the least recently used query when full.
    pub fn store(&self, hash: [u8; 32], query: &str) {
        if let Some(cache) = &self.cache {
            lock(cache).put(hash, query.to_owned());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The cache holds no invariant a panic could break half-way.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// 64 hex digits, either case, to 32 bytes.
fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks(2)) {
        *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
    }
    Some(hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn extension(hash: &str) -> Map<String, Value> {
        json!({"persistedQuery": {"version": 1, "sha256Hash": hash}})
            .as_object()
            .unwrap()
            .clone()
    }

    #[test]
    fn unknown_then_registered_then_found() {
        let store = PersistedQueries::new(2);
        let query = "{ me { id } }";
        let hash = format!("{:x}", Sha256::digest(query));
        let ext = extension(&hash);
        let miss = store
            .lookup(Some(&ext), None, MediaType::Json)
            .err()
            .unwrap();
        assert_eq!(miss.code(), "PERSISTED_QUERY_NOT_FOUND");
        let Ok(Lookup::Register(key)) = store.lookup(Some(&ext), Some(query), MediaType::Json)
        else {
            panic!("a matching hash registers")
        };
        store.store(key, query);
        assert!(matches!(
            store.lookup(Some(&ext), None, MediaType::Json),
            Ok(Lookup::Stored(stored)) if stored == query
        ));
        let wrong = store
            .lookup(Some(&ext), Some("{ mySessions { id } }"), MediaType::Json)
            .err()
            .unwrap();
        assert_eq!(wrong.code(), "PERSISTED_QUERY_HASH_MISMATCH");
    }

    #[test]
    fn the_store_is_bounded() {
        let store = PersistedQueries::new(2);
        for query in ["{ a }", "{ b }", "{ c }"] {
            store.store(Sha256::digest(query).into(), query);
        }
        let first = format!("{:x}", Sha256::digest("{ a }"));
        assert!(
            store
                .lookup(Some(&extension(&first)), None, MediaType::Json)
                .is_err()
        );
        let off = PersistedQueries::new(0);
        let refused = off
            .lookup(Some(&extension(&first)), None, MediaType::Json)
            .err()
            .unwrap();
        assert_eq!(refused.code(), "PERSISTED_QUERY_NOT_SUPPORTED");
    }
}
