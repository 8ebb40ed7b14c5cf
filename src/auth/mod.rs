//! Signing keys, tokens (issue and verify), passwords (hash and verify off the async workers),
//! and the guard that turns a bearer token into a signed-in user and session.

pub mod claims_template;
pub mod guard;
pub mod keys;
pub mod password;
pub mod tokens;

pub use claims_template::ClaimsTemplate;
pub use guard::{Authenticated, BearerToken, RequestAuth, SignedIn, signed_in};
pub use keys::KeySet;
pub use password::{PasswordHasher, Verification};
pub use tokens::{Claims, Profile, Subject, TokenKeys, TokenKind};
