//! authql: a GraphQL authentication service with server-side sessions.
//!
//! Requests flow one way: the HTTP edge (`app`) hands the bearer token and client details to the
//! GraphQL layer (`graphql`), whose resolvers call the service (`service`), which reads and writes
//! through the `store`. Tokens and passwords live in `auth`.

pub mod admin;
pub mod app;
pub mod auth;
pub mod config;
pub mod error;
pub mod graphql;
pub mod http;
pub mod mail;
pub mod metrics;
pub mod oidc;
pub mod service;
pub mod store;
pub mod telemetry;
pub mod webhooks;
