//! The integration suite: one binary, each test with its own server and database.

mod helpers;
mod smtp;

mod accounts;
mod accounts_hostile;
mod ambiguous_headers;
mod binary;
mod client_address;

mod errors;
mod failover;
mod faults;
mod federation;
mod frontend;
mod fuzz;
mod graphql_over_http;
mod hostile;
mod http;
mod identities;
mod instances;
mod mail_delivery;
mod metrics;
mod mongodb;
mod oidc;
mod operators;
mod passwords;
mod protecting_apis;
mod races;
mod readme;
mod register_login;
mod resource_servers;
mod revoke;
mod schema;
mod second_factors;
mod security;
mod session_cache;
mod session_events;
mod sessions;
mod startup;
mod token_edges;
mod unwritable_database;
mod user_story;
mod webauthn_authenticator;
mod webhooks;
