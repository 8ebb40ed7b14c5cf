//! How mail leaves authql (issue 18): through the outbox, over SMTP with STARTTLS and AUTH
//! against a self-signed certificate, through an SMTP outage, past a permanent refusal, once per
//! mail with two instances on one database, and as `.eml` files when no SMTP server is set.

use std::time::Duration;

use serde_json::json;

use crate::{
    accounts::{app_mailing_to, request_reset, reset_password},
    helpers::*,
    smtp::{SmtpOptions, SmtpServer},
};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test]
async fn a_mail_asked_for_while_smtp_is_down_arrives_when_it_is_back() {
    let Some(mut smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    app.register("outage@example.com").await;
    smtp.stop().await;

    // The mutation answers at once: the mail waits in the outbox.
    let started = std::time::Instant::now();
    let answer = request_reset(&app, "outage@example.com").await;
    assert_no_errors(&answer);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // Tried, refused, kept: a retry is scheduled.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let outbox = outbox_rows_in(&app.database_url).await;
        assert_eq!(outbox.len(), 1, "the mail is kept while SMTP is down");
        if outbox[0].attempts >= 2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no retry: {outbox:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    smtp.restart().await;
    let mail = smtp.one_for("outage@example.com").await;
    let token = mail.token(&format!("{}/reset-password#token=", app.address));
    assert_no_errors(&reset_password(&app, &token, "after the outage, a passphrase").await);
    assert!(outbox_rows_in(&app.database_url).await.is_empty());
}

#[tokio::test]
async fn mail_goes_over_starttls_with_auth_to_a_server_trusted_by_its_ca_file_only() {
    let Some(smtp) = SmtpServer::start_with(SmtpOptions {
        starttls: true,
        auth: Some("authql:s3cret".into()),
        ..SmtpOptions::default()
    })
    .await
    else {
        return;
    };
    let trusting = app_mailing_to(&smtp, |config| {
        config.smtp_tls_ca_file = Some(SmtpServer::ca_file());
        config.mail_from = Some("Shop <noreply@shop.example>".into());
    })
    .await;
    trusting.register("tls@example.com").await;
    let mail = smtp.one_for("tls@example.com").await;
    assert!(mail.tls, "delivered over TLS");
    assert!(mail.authenticated, "after AUTH");
    assert_eq!(mail.mail_from, "noreply@shop.example");
    let raw = String::from_utf8_lossy(&mail.raw).into_owned();
    let headers = raw.split("\r\n\r\n").next().unwrap();
    for header in [
        "From: Shop <noreply@shop.example>",
        "Date: ",
        "Message-ID: ",
    ] {
        assert!(headers.contains(header), "{header} in {headers}");
    }

    // Without the CA file the certificate is not trusted: nothing is sent, the mail waits.
    let doubting = app_mailing_to(&smtp, |_| {}).await;
    doubting.register("doubt@example.com").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let outbox = outbox_rows_in(&doubting.database_url).await;
        assert_eq!(outbox.len(), 1);
        if outbox[0].attempts >= 1 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(smtp.delivered_to("doubt@example.com").is_empty());
}

#[tokio::test]
async fn a_permanent_refusal_is_given_up_at_once() {
    let Some(smtp) = SmtpServer::start_with(SmtpOptions {
        reject_prefix: Some("nobody".into()),
        ..SmtpOptions::default()
    })
    .await
    else {
        return;
    };
    let app = app_mailing_to(&smtp, |_| {}).await;
    app.register("nobody@example.com").await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while smtp.rejected() == 0 || !outbox_rows_in(&app.database_url).await.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "not given up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Never tried again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(smtp.rejected(), 1);
}

#[tokio::test]
async fn an_internationalised_domain_is_sent_in_punycode_and_templates_can_be_replaced() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let templates = tempfile::tempdir().unwrap();
    std::fs::write(
        templates.path().join("email_verification.txt"),
        "{% block subject %}Welcome to {{ app_name }}, {{ username }}{% endblock %}\
         {% block body %}Confirm: {{ link }}{% endblock %}",
    )
    .unwrap();
    std::fs::write(
        templates.path().join("email_verification.html"),
        "<p>Hi {{ username }}</p><a href=\"{{ link }}\">confirm</a>",
    )
    .unwrap();
    let directory = templates.path().to_owned();
    let app = app_mailing_to(&smtp, move |config| {
        config.mail_templates_dir = Some(directory);
        config.app_name = "Bücherei".into();
    })
    .await;
    let answer = app
        .register_raw("zoe@bücher.example", PASSWORD, Some("<b>zoe</b>"))
        .await;
    assert_no_errors(&answer);
    let mail = smtp.one_for("zoe@xn--bcher-kva.example").await;
    assert!(mail.to_header.contains("zoe@xn--bcher-kva.example"));
    assert_eq!(mail.subject, "Welcome to Bücherei, <b>zoe</b>");
    assert!(mail.text.starts_with("Confirm: "));
    // The name is text in the HTML part, never markup.
    assert!(
        mail.html.contains("&lt;b&gt;zoe&lt;&#x2f;b&gt;"),
        "{}",
        mail.html
    );
    assert!(!mail.html.contains("<b>zoe"));
}

#[tokio::test]
async fn mails_are_counted_in_the_metrics() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let app = app_mailing_to(&smtp, |config| {
        config.metrics_addr = Some("127.0.0.1:0".parse().unwrap());
    })
    .await;
    app.register("counted@example.com").await;
    smtp.one_for("counted@example.com").await;
    let metrics_url = format!("http://{}/metrics", app.metrics_addr.unwrap());
    // The sender counts after the server accepted the mail: wait for it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let text = reqwest::get(&metrics_url)
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let sent = text.lines().any(|line| {
            line.starts_with("authql_mails_total{")
                && line.contains("kind=\"email_verification\"")
                && line.contains("outcome=\"sent\"")
        });
        if sent && text.contains("authql_mail_outbox_depth") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The zero-config path: the binary with no settings at all writes each mail as an `.eml`
/// file into `mail/`, says so in its log (never the contents), and the link in it works.
#[tokio::test]
async fn without_smtp_the_mail_is_an_eml_file_whose_link_works() {
    let dir = tempfile::tempdir().unwrap();
    let binary = start_binary(dir.path(), &[]).await;
    let client = reqwest::Client::new();
    let post = |query: &'static str, variables: serde_json::Value| {
        let client = client.clone();
        let url = binary.url("/graphql");
        async move {
            client
                .post(url)
                .json(&json!({ "query": query, "variables": variables }))
                .send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    let registered = post(
        "mutation($input: RegisterInput!) { register(input: $input) { accessToken } }",
        json!({ "input": { "email": "dev@example.com", "password": PASSWORD } }),
    )
    .await;
    assert_no_errors(&registered);
    let asked = post(
        "mutation($email: String!) { requestPasswordReset(email: $email) }",
        json!({ "email": "dev@example.com" }),
    )
    .await;
    assert_no_errors(&asked);
    let mail_dir = dir.path().join("mail");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let reset_file = loop {
        let found = std::fs::read_dir(&mail_dir).ok().and_then(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|entry| entry.path())
                .find(|path| {
                    path.extension().is_some_and(|ext| ext == "eml")
                        && path.to_string_lossy().contains("password_reset")
                })
        });
        if let Some(found) = found {
            break found;
        }
        assert!(tokio::time::Instant::now() < deadline, "{}", binary.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let raw = std::fs::read(&reset_file).unwrap();
    let message = mail_parser::MessageParser::default().parse(&raw).unwrap();
    let text = message.body_text(0).unwrap().into_owned();
    let prefix = binary.url("/reset-password#token=");
    let link = text
        .split_whitespace()
        .find(|word| word.starts_with(&prefix))
        .unwrap_or_else(|| panic!("a link starting with {prefix} in {text}"));
    let token = link.split_once("token=").unwrap().1.to_owned();
    let answer = post(
        "mutation($input: ResetPasswordInput!) { resetPassword(input: $input) }",
        json!({ "input": { "token": token, "newPassword": "a password from a file" } }),
    )
    .await;
    assert_no_errors(&answer);
    let login = post(
        "mutation($input: LoginInput!) { login(input: $input) { accessToken } }",
        json!({ "input": { "emailOrUsername": "dev@example.com", "password": "a password from a file" } }),
    )
    .await;
    assert_no_errors(&login);
    let log = binary.log();
    let file_name = reset_file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    assert!(log.contains(&file_name), "the log names the file:\n{log}");
    assert!(!log.contains(&token), "the log never holds the token");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&reset_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only");
    }
}

/// Two instances on one PostgreSQL or MongoDB database, each with its own sender: every mail
/// is claimed by one of them and sent once.
#[tokio::test]
#[ignore = "needs a database server: scripts/test runs it on PostgreSQL and MongoDB"]
async fn two_instances_send_each_mail_once() {
    let Some(smtp) = SmtpServer::start().await else {
        return;
    };
    let first = app_mailing_to(&smtp, |config| {
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    let url = smtp.url();
    let second = spawn_instance_on(&first, move |config| {
        config.smtp_url = Some(url.into());
        config.email_verification = authql::config::EmailVerification::Off;
    })
    .await;
    const USERS: usize = 30;
    let emails: Vec<String> = (0..USERS)
        .map(|n| format!("twice{n}@example.com"))
        .collect();
    for email in &emails {
        first.register(email).await;
    }
    // Every request on each instance, at once: both senders race for every mail.
    let requests = emails.iter().enumerate().map(|(n, email)| {
        let app = if n % 2 == 0 { &first } else { &second };
        async move { request_reset(app, email).await }
    });
    for answer in futures::future::join_all(requests).await {
        assert_no_errors(&answer);
    }
    for email in &emails {
        smtp.wait_for(email, 1, PATIENCE).await;
    }
    // Time for a duplicate to show up, were there one.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for email in &emails {
        assert_eq!(smtp.delivered_to(email).len(), 1, "{email}");
    }
    assert!(outbox_rows_in(&first.database_url).await.is_empty());
}
