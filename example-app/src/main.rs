//! The users API server.
//!
//! Environment:
//! - `DATABASE_URL` (required): the PostgreSQL to use. Migrations run at start-up.
//! - `API_TOKENS`: accepted bearer tokens, `name:token,...` (see `AuthMode::from_env`),
//!   in addition to the rows of `api_tokens`.
//! - `BIND`: the address to listen on, `127.0.0.1` by default; may include a port.
//! - `PORT`: the port, 3000 by default.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use example_app::{AppState, AuthMode, app, db};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), String> {
    let url = match std::env::var("DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => {
            return Err(
                "DATABASE_URL is not set. Set it to a PostgreSQL URL, such as \
                 postgres://user:password@localhost:5432/app"
                    .into(),
            );
        }
    };
    let auth = AuthMode::from_env()?;
    if let AuthMode::Tokens(tokens) = &auth
        && tokens.is_empty()
    {
        tracing::warn!("API_TOKENS is empty: only tokens in the api_tokens table are accepted");
    }
    let addr = listen_addr()?;

    let db = db::connect(&url).await.map_err(|e| e.to_string())?;
    db::migrate(&db)
        .await
        .map_err(|e| format!("migrating {} failed: {e}", db::redact_url(&url)))?;
    tracing::info!(database = %db::redact_url(&url), "migrations are up to date");

    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, app(AppState::new(db, auth)))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("shutting down");
        })
        .await
        .map_err(|e| format!("server error: {e}"))
}

fn listen_addr() -> Result<SocketAddr, String> {
    let port = match std::env::var("PORT") {
        Ok(port) => port
            .parse::<u16>()
            .map_err(|_| format!("PORT must be a port number, got {port:?}"))?,
        Err(_) => 3000,
    };
    match std::env::var("BIND") {
        Ok(bind) => {
            if let Ok(addr) = bind.parse::<SocketAddr>() {
                return Ok(addr);
            }
            let ip = bind.parse::<IpAddr>().map_err(|_| {
                format!("BIND must be an IP address (with or without a port), got {bind:?}")
            })?;
            Ok(SocketAddr::new(ip, port))
        }
        Err(_) => Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)),
    }
}
