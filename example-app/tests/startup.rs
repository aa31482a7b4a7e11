//! The server binary fails fast, with a clear message, when it cannot start.

use std::process::{Command, Output};

fn run_server(envs: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_example-app"));
    command
        .env_remove("DATABASE_URL")
        .env_remove("API_TOKENS")
        .env_remove("PORT")
        .env_remove("BIND");
    for (key, value) in envs {
        command.env(key, value);
    }
    command.output().expect("the example-app binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn missing_database_url_is_explained() {
    let output = run_server(&[]);
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(stderr.contains("DATABASE_URL is not set"), "{stderr}");
}

#[test]
fn unreachable_database_is_explained_without_the_password() {
    // Port 1 on loopback: nothing listens there, so the connection is refused.
    let output = run_server(&[("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/app")]);
    assert!(!output.status.success());
    let stderr = stderr(&output);
    assert!(
        stderr.contains("could not connect to PostgreSQL at postgres://app:***@127.0.0.1:1/app"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[test]
fn bad_settings_are_refused_before_connecting() {
    let url = ("DATABASE_URL", "postgres://app@127.0.0.1:1/app");
    let output = run_server(&[url, ("PORT", "eighty")]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("PORT must be a port number"));

    let output = run_server(&[url, ("API_TOKENS", "short")]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("API_TOKENS entry 0"));
}
