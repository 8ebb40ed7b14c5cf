//! Attacks on the running server, grouped by threat. Each test attacks over HTTP and checks
//! that nothing was accepted, nothing was lost, and the server still serves.

mod brute_force;
mod graphql_abuse;
mod key_rotation;
mod logs;
mod refresh_reuse;
mod revocation;
mod tokens;
