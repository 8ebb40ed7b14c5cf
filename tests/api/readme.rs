//! The README's walkthrough ("The API, operation by operation") runs as pasted, in order, at the
//! prompt of an interactive bash and zsh (history expansion of `!`, zsh's comments-off default),
//! and as a script, against a real server.

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

#[tokio::test]
async fn the_readme_walkthrough_runs_in_bash_and_zsh() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let script = shell_blocks(&readme, "## The API, operation by operation");
    assert!(script.contains("gql()"), "the helper is in the walkthrough");
    // (shell, its arguments): the script is fed on standard input, as a paste is.
    let mut shells: Vec<(&str, &[&str])> = vec![("bash", &["--norc", "-i"]), ("bash", &[])];
    for needed in ["zsh", "jq", "curl"] {
        if !installed(needed) {
            // .ci/run installs them; on a developer machine without them, say so loudly.
            assert!(
                std::env::var_os("CI").is_none(),
                "{needed} is not installed (.ci/run installs it)"
            );
            eprintln!("SKIPPED part of the README walkthrough: {needed} is not installed");
            if needed != "zsh" {
                return;
            }
        } else if needed == "zsh" {
            shells.push(("zsh", &["-f", "-i"]));
        }
    }
    for (shell, arguments) in shells {
        // A fresh server each time: the walkthrough registers ada@example.com.
        let app = spawn_app().await;
        let output = tokio::task::spawn_blocking({
            let script = script.clone();
            let api = format!("{}/graphql", app.address);
            move || {
                use std::io::Write;
                let mut child = Command::new(shell)
                    .args(arguments)
                    .env("API", api)
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
        for complaint in ["event not found", "command not found", "parse error"] {
            assert!(!stderr.contains(complaint), "{shell}: {stderr}");
        }
        let answers: Vec<Value> = stdout
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("{shell}: {line}")))
            .collect();
        assert_eq!(answers.len(), 9, "{shell}: {stdout}");
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
