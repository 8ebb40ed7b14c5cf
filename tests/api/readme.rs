//! The README's walkthroughs ("The API, operation by operation", and the account flows of
//! "Accounts") run as pasted, in order, at the prompt of an interactive bash and zsh (history
//! expansion of `!`, zsh's comments-off default), and as a script, against a real server.

use std::process::Command;

use serde_json::Value;

use crate::helpers::spawn_app;

/// The `sh` code blocks of the README section that starts with `heading`, in order.
fn shell_blocks(readme: &str, heading: &str) -> String {
    let start = readme.find(heading).expect("the section exists");
    let section = &readme[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut script = String::new();
    let mut rest = section;
    while let Some(open) = rest.find("```sh\n") {
        rest = &rest[open + 6..];
        let close = rest.find("```").expect("a closed code block");
        script.push_str(&rest[..close]);
        rest = &rest[close + 3..];
    }
    script
}

fn installed(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|output| output.status.success())
}

/// The shells the walkthroughs run in, with their arguments (the script is fed on standard
/// input, as a paste is); `None` when a tool they need is missing outside CI.
fn shells() -> Option<Vec<(&'static str, &'static [&'static str])>> {
    let mut shells: Vec<(&str, &[&str])> = vec![("bash", &["--norc", "-i"]), ("bash", &[])];
    for needed in ["zsh", "jq", "curl", "python3"] {
        if !installed(needed) {
            // .ci/run installs them; on a developer machine without them, say so loudly.
            assert!(
                std::env::var_os("CI").is_none(),
                "{needed} is not installed (.ci/run installs it)"
            );
            eprintln!("SKIPPED part of the README walkthrough: {needed} is not installed");
            if needed != "zsh" {
                return None;
            }
        } else if needed == "zsh" {
            shells.push(("zsh", &["-f", "-i"]));
        }
    }
    Some(shells)
}

/// Pastes `script` into `shell` in `directory` with `API` set; asserts it ends well and
/// complains of nothing; returns the JSON lines it printed.
async fn paste(
    shell: &'static str,
    arguments: &'static [&'static str],
    script: &str,
    api: String,
    directory: std::path::PathBuf,
) -> Vec<Value> {
    let output = tokio::task::spawn_blocking({
        let script = script.to_owned();
        move || {
            use std::io::Write;
            let mut child = Command::new(shell)
                .args(arguments)
                .env("API", api)
                .current_dir(directory)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("the shell runs");
            let mut stdin = child.stdin.take().expect("a stdin");
            stdin.write_all(script.as_bytes()).expect("the paste");
            stdin.write_all(b"\nexit\n").expect("the paste");
            drop(stdin);
            child.wait_with_output().expect("the shell ends")
        }
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let shell = format!("{shell} {arguments:?}");
    assert!(output.status.success(), "{shell}: {stderr}\n{stdout}");
    for complaint in [
        "event not found",
        "command not found",
        "parse error",
        "Traceback",
        "no matches found",
        "No such file",
    ] {
        assert!(!stderr.contains(complaint), "{shell}: {stderr}");
    }
    stdout
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("{shell}: {line}")))
        .collect()
}

/// "Accounts": verify the address, reset the password, change the address, with the links of
/// the `.eml` files the server (no SMTP_URL) writes into `mail/` of its working directory.
#[tokio::test]
async fn the_readme_account_flows_run_in_bash_and_zsh() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let api_section = shell_blocks(&readme, "## The API, operation by operation");
    // `gql`, from the first block of the API walkthrough.
    let helper = &api_section[..api_section.find("\n}\n").expect("gql's definition") + 3];
    assert!(helper.contains("gql()"), "{helper}");
    let script = format!("{helper}{}", shell_blocks(&readme, "## Accounts"));
    let Some(shells) = shells() else {
        return;
    };
    for (shell, arguments) in shells {
        let app = spawn_app().await;
        let directory = app.mail_dir.parent().unwrap().to_owned();
        let answers = paste(
            shell,
            arguments,
            &script,
            format!("{}/graphql", app.address),
            directory,
        )
        .await;
        let shell = format!("{shell} {arguments:?}");
        assert_eq!(answers.len(), 7, "{shell}: {answers:?}");
        assert_eq!(
            answers[0]["data"]["verifyEmail"]["emailVerified"], true,
            "{shell}"
        );
        assert_eq!(answers[1]["data"]["requestPasswordReset"], true, "{shell}");
        assert_eq!(answers[2]["data"]["resetPassword"], true, "{shell}");
        // The reset ended the session of the access token registration gave.
        assert_eq!(
            answers[3]["errors"][0]["extensions"]["reason"], "REVOKED",
            "{shell}: {}",
            answers[3]
        );
        assert_eq!(answers[4]["data"]["requestEmailChange"], true, "{shell}");
        assert_eq!(
            answers[5]["data"]["verifyEmail"]["email"],
            "grace@new.example"
        );
        assert_eq!(
            answers[6]["data"]["me"]["email"], "grace@new.example",
            "{shell}"
        );
        assert_eq!(answers[6]["data"]["me"]["emailVerified"], true, "{shell}");
    }
}

#[tokio::test]
async fn the_readme_walkthrough_runs_in_bash_and_zsh() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let script = shell_blocks(&readme, "## The API, operation by operation");
    assert!(script.contains("gql()"), "the helper is in the walkthrough");
    let Some(shells) = shells() else {
        return;
    };
    for (shell, arguments) in shells {
        // A fresh server each time: the walkthrough registers ada@example.com.
        let app = spawn_app().await;
        let directory = app.mail_dir.parent().unwrap().to_owned();
        let answers = paste(
            shell,
            arguments,
            &script,
            format!("{}/graphql", app.address),
            directory,
        )
        .await;
        let shell = format!("{shell} {arguments:?}");
        assert_eq!(answers.len(), 9, "{shell}: {answers:?}");
        for answer in &answers {
            assert!(answer.get("errors").is_none(), "{shell}: {answer}");
        }
        assert_eq!(answers[7]["data"]["logout"], true, "{shell}");
        assert_eq!(
            answers[4]["data"]["revokeTokens"]["revokedCount"], 1,
            "{shell}"
        );
        // A fresh login with the changed password, then deleteAccount with it.
        assert_eq!(answers[8]["data"]["deleteAccount"], true, "{shell}");
        assert!(
            app.user_rows().await.is_empty(),
            "{shell}: the account is gone"
        );
        assert!(
            app.session_rows().await.is_empty(),
            "{shell}: every session ended"
        );
    }
}

/// "Second factors and passkeys": an authenticator app turned on with a code computed as the app
/// would, then a login that answers MFA_REQUIRED and is completed with a recovery code.
#[tokio::test]
async fn the_readme_second_factor_flow_runs_in_bash_and_zsh() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let api_section = shell_blocks(&readme, "## The API, operation by operation");
    let helper = &api_section[..api_section.find("\n}\n").expect("gql's definition") + 3];
    let script = format!(
        "{helper}{}",
        shell_blocks(&readme, "## Second factors and passkeys")
    );
    let Some(shells) = shells() else {
        return;
    };
    for (shell, arguments) in shells {
        let app = spawn_app().await;
        let directory = app.mail_dir.parent().unwrap().to_owned();
        let answers = paste(
            shell,
            arguments,
            &script,
            format!("{}/graphql", app.address),
            directory,
        )
        .await;
        let shell = format!("{shell} {arguments:?}");
        assert_eq!(answers.len(), 4, "{shell}: {answers:?}");
        let codes = answers[0]["data"]["confirmTotp"]
            .as_array()
            .unwrap_or_else(|| panic!("{shell}: {}", answers[0]));
        assert_eq!(codes.len(), 10, "{shell}");
        assert_eq!(
            answers[1]["errors"][0]["extensions"]["code"], "MFA_REQUIRED",
            "{shell}: {}",
            answers[1]
        );
        assert_eq!(
            answers[2]["data"]["verifyMfa"]["session"]["authenticationMethods"],
            serde_json::json!(["pwd", "otp", "mfa"]),
            "{shell}: {}",
            answers[2]
        );
        assert_eq!(answers[3]["data"]["me"]["totpEnabled"], true, "{shell}");
        assert_eq!(answers[3]["data"]["me"]["recoveryCodesLeft"], 9, "{shell}");
        // The session that turned TOTP on, and the one verifyMfa made.
        let sessions = answers[3]["data"]["mySessions"].as_array().unwrap();
        assert_eq!(sessions.len(), 2, "{shell}: {}", answers[3]);
    }
}

/// "Protecting your other APIs": a token checked through `/auth/verify` and introspection, then
/// revoked and refused by both on the very next request.
#[tokio::test]
async fn the_readme_resource_server_walkthrough_runs_in_bash_and_zsh() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let api_section = shell_blocks(&readme, "## The API, operation by operation");
    let helper = &api_section[..api_section.find("\n}\n").expect("gql's definition") + 3];
    let script = format!(
        "{helper}{}",
        shell_blocks(&readme, "## Protecting your other APIs")
    );
    let Some(shells) = shells() else {
        return;
    };
    for (shell, arguments) in shells {
        let app = crate::helpers::spawn_app_with(|config| {
            config.introspection_clients = vec![authql::config::IntrospectionClient {
                id: "notes".into(),
                secret: "notes-secret-0123456789".into(),
            }];
        })
        .await;
        let directory = app.mail_dir.parent().unwrap().to_owned();
        let answers = paste(
            shell,
            arguments,
            &script,
            format!("{}/graphql", app.address),
            directory,
        )
        .await;
        let shell = format!("{shell} {arguments:?}");
        assert_eq!(answers.len(), 5, "{shell}: {answers:?}");
        assert_eq!(answers[0], 200, "{shell}");
        assert_eq!(
            answers[1],
            serde_json::json!({"active": true, "token_type": "Bearer", "email": "lovelace@example.com", "roles": [], "amr": ["pwd"]}),
            "{shell}"
        );
        assert_eq!(
            answers[2]["data"]["revokeTokens"]["revokedCount"], 1,
            "{shell}: {}",
            answers[2]
        );
        assert_eq!(answers[3], 401, "{shell}");
        assert_eq!(answers[4], serde_json::json!({"active": false}), "{shell}");
    }
}
