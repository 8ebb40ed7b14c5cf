//! Property tests of the edge (issue 17): generated query texts, JSON bodies and WebSocket
//! frames against one running server. Whatever comes in, an answer comes out within a bound,
//! it is never a 500, every error carries a code, and the server still serves afterwards.
//!
//! The budget is fixed: `AUTHQL_FUZZ_CASES` cases per property (64 by default, what CI runs).
//! proptest prints the smallest failing input it finds.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use proptest::{
    prelude::*,
    test_runner::{Config, TestRunner},
};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::{helpers::*, session_events::WsClient};

/// The longest any answer may take: a liveness bound, far above what any takes.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn runner() -> TestRunner {
    let cases = std::env::var("AUTHQL_FUZZ_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(64);
    TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    })
}

/// Query text from GraphQL's own tokens, in any order and nesting: fragments that spread each
/// other (cycles and fan-out included), directives, aliases, strings, comments, brackets.
fn query_text() -> impl Strategy<Value = String> {
    let token = prop_oneof![
        Just("{".to_owned()),
        Just("}".to_owned()),
        Just("[".to_owned()),
        Just("]".to_owned()),
        Just("(".to_owned()),
        Just(")".to_owned()),
        Just("query ".to_owned()),
        Just("mutation ".to_owned()),
        Just("subscription ".to_owned()),
        (0..4u8).prop_map(|n| format!("...F{n} ")),
        (0..4u8).prop_map(|n| format!("fragment F{n} on Query ")),
        Just("... on Query ".to_owned()),
        Just("@include(if: true) ".to_owned()),
        Just("@aa ".to_owned()),
        Just("__typename ".to_owned()),
        Just("me ".to_owned()),
        Just("id ".to_owned()),
        Just("mySessions(first: 2) ".to_owned()),
        Just("sessionEvents ".to_owned()),
        Just("a: ".to_owned()),
        Just("x: ".to_owned()),
        Just("$v ".to_owned()),
        Just("1 ".to_owned()),
        Just("\"str\\\"ing\" ".to_owned()),
        Just("\"\"\"block\"\"\" ".to_owned()),
        Just("# comment\n".to_owned()),
        "\\PC{0,3}",
    ];
    prop_oneof![
        prop::collection::vec(token, 0..120).prop_map(|tokens| tokens.concat()),
        // Deep nesting of one bracket kind, past every limit.
        (0..3usize, 1..3000usize).prop_map(|(kind, depth)| {
            let (open, close) = [("[", "]"), ("{a:", "}"), ("{ me ", "}")][kind];
            format!(
                "{{ me(x: {}1{}) {{ id }} }}",
                open.repeat(depth),
                close.repeat(depth)
            )
        }),
        // Fan-out: levels of fragments, each spreading the next several times.
        (1..12usize, 1..12usize).prop_map(|(levels, spreads)| {
            let mut query = String::from("{ ...F0 }");
            for level in 0..levels {
                query.push_str(&format!(
                    " fragment F{level} on Query {{ {}}}",
                    format!("...F{} ", level + 1).repeat(spreads)
                ));
            }
            query.push_str(&format!(" fragment F{levels} on Query {{ __typename }}"));
            query
        }),
    ]
}

/// JSON of any shape, up to a depth past serde_json's limit of 128.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|number| json!(number)),
        "\\PC{0,20}".prop_map(Value::from),
        query_text().prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::btree_map("[a-z]{0,8}", inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// A request body: GraphQL-over-HTTP parameters of any shape, or bytes of any kind.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let parameters = (
        prop::option::of(query_text()),
        prop::option::of(json_value()),
        prop::option::of(json_value()),
        prop::option::of("[A-Za-z]{0,10}"),
    )
        .prop_map(|(query, variables, extensions, operation_name)| {
            let mut body = serde_json::Map::new();
            if let Some(query) = query {
                body.insert("query".into(), query.into());
            }
            if let Some(variables) = variables {
                body.insert("variables".into(), variables);
            }
            if let Some(extensions) = extensions {
                body.insert("extensions".into(), extensions);
            }
            if let Some(name) = operation_name {
                body.insert("operationName".into(), name.into());
            }
            Value::Object(body).to_string().into_bytes()
        });
    let deep = (100..400usize).prop_map(|depth| {
        format!(
            r#"{{"query":"{{ me {{ id }} }}","variables":{{"x":{}1{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )
        .into_bytes()
    });
    prop_oneof![
        6 => parameters,
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => json_value().prop_map(|value| value.to_string().into_bytes()),
        1 => deep,
    ]
}

/// Checks an HTTP answer: in time (the caller's timeout), never a 500, a JSON body, and a
/// code on every error.
async fn check_answer(answer: reqwest::Response) -> Result<(), TestCaseError> {
    let status = answer.status();
    prop_assert!(status != reqwest::StatusCode::INTERNAL_SERVER_ERROR);
    let text = answer
        .text()
        .await
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    let body: Value = serde_json::from_str(&text)
        .map_err(|_| TestCaseError::fail(format!("{status}: not JSON: {text}")))?;
    if let Some(errors) = body.get("errors").and_then(Value::as_array) {
        for error in errors {
            let code = error.pointer("/extensions/code").and_then(Value::as_str);
            prop_assert!(code.is_some(), "an error without a code: {}", body);
            prop_assert!(code != Some("INTERNAL_SERVER_ERROR"), "{}", body);
        }
    } else {
        prop_assert!(status.is_success(), "{}: {}", status, body);
    }
    Ok(())
}

#[test]
fn generated_posts_and_gets_are_answered_in_time_and_never_a_500() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app());
    let account = runtime.block_on(app.register("fuzz@x.com"));
    let client = reqwest::Client::builder()
        .timeout(ANSWER_WITHIN)
        .build()
        .unwrap();
    let url = format!("{}/graphql", app.address);
    runner()
        .run(&(body(), any::<bool>()), |(body, signed_in)| {
            runtime.block_on(async {
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body);
                if signed_in {
                    request = request.bearer_auth(&account.access_token);
                }
                let answer = request
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("no answer in time: {e}")))?;
                check_answer(answer).await
            })
        })
        .unwrap();
    runner()
        .run(&query_text(), |query| {
            runtime.block_on(async {
                let answer = client
                    .get(&url)
                    .query(&[("query", query.as_str())])
                    .bearer_auth(&account.access_token)
                    .send()
                    .await
                    .map_err(|e| TestCaseError::fail(format!("no answer in time: {e}")))?;
                check_answer(answer).await
            })
        })
        .unwrap();
    runtime.block_on(async {
        assert_eq!(app.get("/healthz").await.status(), reqwest::StatusCode::OK);
        assert_no_errors(&app.me(&account.access_token).await);
    });
}

/// A frame of the protocol's message types (and some that are not), with any payload.
fn frame() -> impl Strategy<Value = String> {
    // Mostly what a client may send, so that most frames get past the first check.
    let kind = prop_oneof![
        6 => Just("subscribe"),
        2 => Just("ping"),
        1 => Just("pong"),
        2 => Just("complete"),
        1 => Just("connection_init"),
        1 => prop_oneof![
            Just("next"),
            Just("error"),
            Just("connection_ack"),
            Just("nonsense")
        ],
    ];
    let message = (
        kind,
        prop::option::weighted(
            0.9,
            prop_oneof![
                9 => "[0-9a-z]{0,6}".prop_map(Value::from),
                1 => any::<i64>().prop_map(Value::from)
            ],
        ),
        prop::option::weighted(
            0.9,
            prop_oneof![
                6 => (query_text(), prop::option::weighted(0.2, json_value())).prop_map(|(query, variables)| {
                    json!({ "query": query, "variables": variables })
                }),
                2 => Just(json!({ "query": crate::session_events::SESSION_EVENTS })),
                1 => json_value(),
            ],
        ),
    )
        .prop_map(|(kind, id, payload)| {
            let mut message = json!({ "type": kind });
            if let Some(id) = id {
                message["id"] = id;
            }
            if let Some(payload) = payload {
                message["payload"] = payload;
            }
            message.to_string()
        });
    prop_oneof![
        8 => message,
        1 => "\\PC{0,200}",
        1 => (100..300usize).prop_map(|depth| format!(
            r#"{{"type":"subscribe","id":"1","payload":{{"query":"subscription {{ sessionEvents {{ type }} }}","variables":{{"x":{}1{}}}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        )),
    ]
}

#[test]
fn generated_websocket_frames_are_answered_or_closed_in_time_with_a_known_code() {
    const KNOWN_CLOSES: [u16; 8] = [1000, 1013, 3008, 4400, 4401, 4403, 4409, 4429];
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let app = runtime.block_on(spawn_app_with(|config| {
        config.websocket_init_timeout_seconds = 2;
    }));
    let account = runtime.block_on(app.register("fuzz-ws@x.com"));
    runner()
        .run(
            &(
                prop::collection::vec(frame(), 1..4),
                prop::bool::weighted(0.8),
            ),
            |(frames, signed_in)| {
                runtime.block_on(async {
                    let mut client = if signed_in {
                        WsClient::signed_in(&app.address, &account.access_token).await
                    } else {
                        WsClient::connect_to(&app.address, None).await.unwrap()
                    };
                    for frame in frames {
                        if client
                            .socket
                            .send(Message::Text(frame.into()))
                            .await
                            .is_err()
                        {
                            break; // closed by the server already
                        }
                    }
                    // Answers or a close, each within the bound; quiet for a moment ends it.
                    loop {
                        let next =
                            tokio::time::timeout(Duration::from_millis(300), client.socket.next())
                                .await;
                        match next {
                            Err(_) | Ok(None) => break,
                            Ok(Some(Err(_))) => break,
                            Ok(Some(Ok(Message::Close(frame)))) => {
                                let code = frame.map_or(1005, |frame| u16::from(frame.code));
                                prop_assert!(KNOWN_CLOSES.contains(&code), "closed with {}", code);
                                break;
                            }
                            Ok(Some(Ok(Message::Text(text)))) => {
                                let message: Value = serde_json::from_str(&text).map_err(|_| {
                                    TestCaseError::fail(format!("not JSON: {text}"))
                                })?;
                                if message["type"] == "error" {
                                    for error in message["payload"].as_array().into_iter().flatten()
                                    {
                                        let code = error
                                            .pointer("/extensions/code")
                                            .and_then(Value::as_str);
                                        prop_assert!(code.is_some(), "{}", message);
                                        prop_assert!(
                                            code != Some("INTERNAL_SERVER_ERROR"),
                                            "{}",
                                            message
                                        );
                                    }
                                }
                            }
                            Ok(Some(Ok(_))) => {}
                        }
                    }
                    Ok(())
                })
            },
        )
        .unwrap();
    runtime.block_on(async {
        assert_eq!(app.get("/healthz").await.status(), reqwest::StatusCode::OK);
        let mut client = WsClient::signed_in(&app.address, &account.access_token).await;
        client
            .subscribe("1", crate::session_events::SESSION_EVENTS)
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        app.login("fuzz-ws@x.com").await;
        let event = client.next_event(ANSWER_WITHIN).await.expect("an event");
        assert_eq!(event["type"], "CREATED");
    });
}
