//! The client's address behind proxies, and the rate limits keyed on it: a forged forwarding
//! chain cannot choose the address or dodge the limit, the forms proxies write are read, and an
//! IPv6 host cannot rotate through its /64.

use serde_json::{Value, json};

use crate::helpers::{PASSWORD, TestApp, error_code, spawn_app_with, string_at};

/// A server behind a trusted proxy on 127.0.0.1, allowing `per_minute` attempts per address.
async fn behind_proxy(per_minute: u32) -> TestApp {
    spawn_app_with(|config| {
        config.trusted_proxies = vec!["127.0.0.1".into()];
        config.rate_limit_ip_per_minute = per_minute;
    })
    .await
}

async fn login_with_header(app: &TestApp, name: &str, value: &str) -> Value {
    let query = format!(
        "mutation {{ login(input: {{emailOrUsername: \"ada@example.com\", password: \"{PASSWORD}\"}}) {{ session {{ ipAddress }} }} }}"
    );
    app.client
        .post(format!("{}/graphql", app.address))
        .header(name, value)
        .json(&json!({ "query": query }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn recorded_address(body: &Value) -> String {
    string_at(body, "/data/login/session/ipAddress")
}

#[tokio::test]
async fn a_forged_forwarded_chain_cannot_choose_the_address_or_dodge_the_limit() {
    let app = behind_proxy(3).await;
    app.register("ada@example.com").await; // from 127.0.0.1: its own bucket

    // What the client wrote left of the proxy's entry is never read.
    let body = login_with_header(&app, "x-forwarded-for", "6.6.6.6, x, 203.0.113.50").await;
    assert_eq!(recorded_address(&body), "203.0.113.50", "{body}");
    for n in 1..=2 {
        let chain = format!("10.9.9.{n}, x, 203.0.113.50");
        let body = login_with_header(&app, "x-forwarded-for", &chain).await;
        assert_eq!(recorded_address(&body), "203.0.113.50");
    }
    let body = login_with_header(&app, "x-forwarded-for", "10.9.9.99, x, 203.0.113.50").await;
    assert_eq!(error_code(&body), "RATE_LIMITED", "{body}");

    // Junk where the client's address belongs: the proxy's own address, one bucket for all.
    let body = login_with_header(&app, "x-forwarded-for", "203.0.113.60, not-an-address").await;
    assert_eq!(recorded_address(&body), "127.0.0.1", "{body}");
}

#[tokio::test]
async fn the_forms_proxies_write_are_read_as_one_address() {
    let app = behind_proxy(3).await;
    app.register("ada@example.com").await;
    // ip:port from a gateway, three different ports: one client, one bucket.
    for port in [51234, 51235, 51236] {
        let body = login_with_header(&app, "x-forwarded-for", &format!("203.0.113.5:{port}")).await;
        assert_eq!(recorded_address(&body), "203.0.113.5", "{body}");
    }
    let body = login_with_header(&app, "x-forwarded-for", "203.0.113.5").await;
    assert_eq!(error_code(&body), "RATE_LIMITED");
    // Spelled as an IPv4-mapped IPv6 address it is the same client.
    let body = login_with_header(&app, "x-forwarded-for", "[::ffff:203.0.113.5]:443").await;
    assert_eq!(error_code(&body), "RATE_LIMITED");

    // RFC 7239 Forwarded, bracketed IPv6 with a port, quoted.
    let body = login_with_header(&app, "forwarded", "for=\"[2001:DB8::7]:4711\";proto=https").await;
    assert_eq!(recorded_address(&body), "2001:db8::7", "{body}");
}

#[tokio::test]
async fn an_ipv6_host_cannot_rotate_through_its_network() {
    let app = behind_proxy(3).await;
    app.register("ada@example.com").await;
    let mut limited = 0;
    for n in 1..=8 {
        let address = format!("2001:db8:1:2::{n:x}");
        let body = login_with_header(&app, "x-forwarded-for", &address).await;
        if body["errors"][0]["extensions"]["code"] == "RATE_LIMITED" {
            limited += 1;
        } else {
            // The session keeps the full address.
            assert_eq!(recorded_address(&body), address, "{body}");
        }
    }
    assert_eq!(limited, 5, "three attempts per /64, then refused");
    // Another /64 is another client.
    let body = login_with_header(&app, "x-forwarded-for", "2001:db8:1:3::1").await;
    assert_eq!(recorded_address(&body), "2001:db8:1:3::1");
}

#[tokio::test]
async fn the_ipv6_prefix_is_a_setting() {
    let app = spawn_app_with(|config| {
        config.trusted_proxies = vec!["127.0.0.1".into()];
        config.rate_limit_ip_per_minute = 1;
        config.rate_limit_ipv6_prefix = 128;
    })
    .await;
    app.register("ada@example.com").await;
    for n in 1..=3 {
        let body = login_with_header(&app, "x-forwarded-for", &format!("2001:db8::{n}")).await;
        assert!(
            body["data"]["login"].is_object(),
            "every /128 is its own client: {body}"
        );
    }
}
