//! A counting proxy for the PostgreSQL wire protocol.
//!
//! PostgreSQL's `pg_stat_statements` needs `shared_preload_libraries` and a
//! server restart, which a benchmark must not do to a shared server. Instead,
//! the counting pass sends each suite through this proxy: a Unix socket that
//! forwards every byte unchanged and reads the client's side of the protocol.
//!
//! - A **round trip** is one `Query` or `Sync` message: each makes the client
//!   wait for the server's `ReadyForQuery`.
//! - A **statement** is one `Execute` (extended protocol, the statement text
//!   known from its `Parse`) or one `;`-separated statement of a `Query`.
//! - A **connection** is one `StartupMessage`.
//! - The **wait** of a round trip is the time from the client's `Query` or
//!   `Sync` to the server's `ReadyForQuery`, as seen by the proxy; it is
//!   booked to the kind of statement that ran (`connect` for start-up,
//!   `prepare` for a `Sync` after `Parse`/`Describe` only).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener, UnixStream};

/// Where the real server listens.
#[derive(Clone, Debug)]
pub enum Upstream {
    Unix(PathBuf),
    Tcp(String),
}

/// What went through the proxy since the last [`Proxy::take`].
#[derive(Default, Debug, Clone)]
pub struct Counts {
    pub connections: u64,
    pub round_trips: u64,
    pub statements: u64,
    /// Statements by kind: `workload`, `transaction`, `database`, `cleanup`, `setup`.
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Statements by (normalised) text.
    pub by_sql: HashMap<String, u64>,
    /// Seconds spent waiting for the server, by kind of round trip.
    pub wait_by_kind: BTreeMap<&'static str, f64>,
}

impl Counts {
    fn statement(&mut self, sql: &str) {
        let sql = normalise(&strip_comments(sql));
        if sql.is_empty() {
            return;
        }
        self.statements += 1;
        let k = kind(&sql);
        *self.by_kind.entry(k).or_default() += 1;
        let sql = if k == "database" {
            hide_names(&sql)
        } else {
            sql
        };
        *self.by_sql.entry(sql).or_default() += 1;
    }
}

/// Drops `--` comment lines.
fn strip_comments(sql: &str) -> String {
    sql.lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Finds message boundaries in the server's byte stream.
#[derive(Default)]
struct Scan {
    header: [u8; 5],
    have: usize,
    skip: usize,
}

impl Scan {
    fn feed(&mut self, mut buf: &[u8], mut on_message: impl FnMut(u8)) {
        while !buf.is_empty() {
            if self.skip > 0 {
                let k = self.skip.min(buf.len());
                self.skip -= k;
                buf = &buf[k..];
                continue;
            }
            let k = (5 - self.have).min(buf.len());
            self.header[self.have..self.have + k].copy_from_slice(&buf[..k]);
            self.have += k;
            buf = &buf[k..];
            if self.have == 5 {
                let len = u32::from_be_bytes(self.header[1..5].try_into().unwrap()) as usize;
                self.skip = len.saturating_sub(4);
                self.have = 0;
                on_message(self.header[0]);
            }
        }
    }
}

/// Collapses whitespace and cuts long statements (migrations) short.
fn normalise(sql: &str) -> String {
    let mut out = String::new();
    for word in sql.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
        if out.len() > 90 {
            out.push('…');
            break;
        }
    }
    out
}

/// `"name"` → `"…"`, so that statements on generated databases group.
fn hide_names(sql: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    for c in sql.chars() {
        if c == '"' {
            if !quoted {
                out.push_str("\"…");
            } else {
                out.push('"');
            }
            quoted = !quoted;
        } else if !quoted {
            out.push(c);
        }
    }
    out
}

/// The most telling kind among several statements sent in one round trip.
fn main_kind<'a>(kinds: impl Iterator<Item = &'a str>) -> &'static str {
    const ORDER: [&str; 5] = ["database", "setup", "cleanup", "workload", "transaction"];
    let kinds: Vec<&str> = kinds.collect();
    ORDER
        .into_iter()
        .find(|k| kinds.contains(k))
        .unwrap_or("setup")
}

/// What a statement is for.
pub fn kind(sql: &str) -> &'static str {
    let s = sql.trim_start().to_ascii_uppercase();
    let starts = |p: &str| s.starts_with(p);
    if starts("INSERT INTO USERS (EMAIL, NAME)")
        || starts("SELECT EMAIL, NAME FROM USERS")
        || starts("UPDATE USERS SET NAME")
        || starts("SELECT COUNT(*) FROM USERS")
    {
        "workload"
    } else if starts("BEGIN")
        || starts("START TRANSACTION")
        || starts("SAVEPOINT")
        || starts("RELEASE")
        || starts("ROLLBACK")
        || starts("COMMIT")
        || starts("SET CONSTRAINTS")
    {
        "transaction"
    } else if starts("CREATE DATABASE") || starts("DROP DATABASE") || starts("ALTER DATABASE") {
        "database"
    } else if starts("TRUNCATE") {
        "cleanup"
    } else {
        "setup"
    }
}

/// Splits a simple-protocol query string into statements: on `;` outside
/// quotes, dollar quotes and comments. Good enough for migrations.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\'' | b'"' => {
                let q = bytes[i];
                i += 1;
                while i < bytes.len() && bytes[i] != q {
                    i += 1;
                }
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'$' => {
                // $tag$ ... $tag$
                if let Some(end) = sql[i + 1..].find('$') {
                    let tag = &sql[i..i + end + 2];
                    if tag[1..tag.len() - 1]
                        .chars()
                        .all(|c| c.is_alphanumeric() || c == '_')
                        && let Some(close) = sql[i + tag.len()..].find(tag)
                    {
                        i += tag.len() + close + tag.len() - 1;
                    }
                }
            }
            b';' => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        i += 1;
    }
    out.push(&sql[start.min(sql.len())..]);
    out.into_iter()
        .filter(|s| {
            s.lines()
                .map(|l| l.split("--").next().unwrap_or("").trim())
                .any(|l| !l.is_empty())
        })
        .collect()
}

/// A running proxy. Clients connect with `host=<dir>` and the server's port.
pub struct Proxy {
    pub dir: PathBuf,
    counts: Arc<Mutex<Counts>>,
}

impl Proxy {
    /// Listens on `<dir>/.s.PGSQL.<port>` and forwards to `upstream`.
    pub async fn start(dir: &Path, port: u16, upstream: Upstream) -> std::io::Result<Proxy> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join(format!(".s.PGSQL.{port}"));
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket)?;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let c = counts.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counts = c.clone();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let _ = serve(client, upstream, counts).await;
                });
            }
        });
        Ok(Proxy {
            dir: dir.to_path_buf(),
            counts,
        })
    }

    /// The counts so far, and a fresh start.
    pub fn take(&self) -> Counts {
        std::mem::take(&mut *self.counts.lock().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn serve(
    client: UnixStream,
    upstream: Upstream,
    counts: Arc<Mutex<Counts>>,
) -> std::io::Result<()> {
    match upstream {
        Upstream::Unix(path) => {
            let server = UnixStream::connect(path).await?;
            let (sr, sw) = server.into_split();
            pump(client, sr, sw, counts).await
        }
        Upstream::Tcp(addr) => {
            let server = TcpStream::connect(addr).await?;
            server.set_nodelay(true)?;
            let (sr, sw) = server.into_split();
            pump(client, sr, sw, counts).await
        }
    }
}

async fn read_exact_vec<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0; n];
    r.read_exact(&mut buf).await?;
    Ok(buf)
}

fn cstr(body: &[u8], at: usize) -> (&str, usize) {
    let end = body[at..]
        .iter()
        .position(|&b| b == 0)
        .map_or(body.len(), |p| at + p);
    (
        std::str::from_utf8(&body[at..end]).unwrap_or(""),
        (end + 1).min(body.len()),
    )
}

async fn pump<SR, SW>(
    client: UnixStream,
    mut server_r: SR,
    mut server_w: SW,
    counts: Arc<Mutex<Counts>>,
) -> std::io::Result<()>
where
    SR: AsyncRead + Unpin + Send + 'static,
    SW: AsyncWrite + Unpin,
{
    let (client_r, mut client_w) = client.into_split();
    let mut client_r = BufReader::with_capacity(64 * 1024, client_r);

    // Start-up: untyped messages. Refuse TLS / GSS encryption (the client
    // then goes on in plain text), forward the StartupMessage.
    loop {
        let len = client_r.read_u32().await? as usize;
        let body = read_exact_vec(&mut client_r, len.saturating_sub(4)).await?;
        let code = body
            .get(..4)
            .map(|b| u32::from_be_bytes(b.try_into().unwrap()));
        match code {
            Some(80877103) | Some(80877104) => {
                client_w.write_all(b"N").await?;
            }
            _ => {
                server_w.write_all(&(len as u32).to_be_bytes()).await?;
                server_w.write_all(&body).await?;
                if code == Some(80877102) {
                    // CancelRequest: no session follows.
                    server_w.flush().await?;
                    return Ok(());
                }
                counts.lock().unwrap().connections += 1;
                break;
            }
        }
    }
    // Round trips in flight, oldest first: when each was sent, and its kind.
    let pending: Arc<Mutex<VecDeque<(Instant, &'static str)>>> =
        Arc::new(Mutex::new(VecDeque::from([(Instant::now(), "connect")])));
    let (p, c) = (pending.clone(), counts.clone());
    let back = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 * 1024];
        let mut scan = Scan::default();
        loop {
            let n = match server_r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            scan.feed(&buf[..n], |tag| {
                if tag == b'Z'
                    && let Some((sent, kind)) = p.lock().unwrap().pop_front()
                {
                    *c.lock().unwrap().wait_by_kind.entry(kind).or_default() +=
                        sent.elapsed().as_secs_f64();
                }
            });
            if client_w.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = client_w.shutdown().await;
    });

    // Typed messages.
    let mut statements: HashMap<String, String> = HashMap::new();
    let mut portal_sql = String::new();
    // Kinds of the statements executed since the last Sync.
    let mut since_sync: Vec<&'static str> = Vec::new();
    while let Ok(tag) = client_r.read_u8().await {
        let len = client_r.read_u32().await? as usize;
        let body = read_exact_vec(&mut client_r, len.saturating_sub(4)).await?;
        {
            let mut c = counts.lock().unwrap();
            match tag {
                b'Q' => {
                    c.round_trips += 1;
                    let (sql, _) = cstr(&body, 0);
                    let stmts = split_statements(sql);
                    for stmt in &stmts {
                        c.statement(stmt);
                    }
                    let k = main_kind(stmts.iter().map(|s| kind(&strip_comments(s))));
                    pending.lock().unwrap().push_back((Instant::now(), k));
                }
                b'P' => {
                    let (name, at) = cstr(&body, 0);
                    let (sql, _) = cstr(&body, at);
                    statements.insert(name.to_string(), sql.to_string());
                }
                b'B' => {
                    let (_portal, at) = cstr(&body, 0);
                    let (stmt, _) = cstr(&body, at);
                    portal_sql = statements.get(stmt).cloned().unwrap_or_default();
                }
                b'E' => {
                    c.statement(&portal_sql.clone());
                    since_sync.push(kind(&portal_sql));
                }
                b'S' => {
                    c.round_trips += 1;
                    let k = if since_sync.is_empty() {
                        "prepare"
                    } else {
                        main_kind(since_sync.drain(..))
                    };
                    pending.lock().unwrap().push_back((Instant::now(), k));
                }
                _ => {}
            }
        }
        server_w.write_all(&[tag]).await?;
        server_w.write_all(&(len as u32).to_be_bytes()).await?;
        server_w.write_all(&body).await?;
        if tag == b'X' {
            break;
        }
    }
    let _ = server_w.shutdown().await;
    let _ = back.await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_statements() {
        assert_eq!(
            split_statements("BEGIN; SAVEPOINT dbt_auto"),
            ["BEGIN", " SAVEPOINT dbt_auto"]
        );
        assert_eq!(
            split_statements("-- a; comment\nCREATE TABLE t (x text DEFAULT ';');\n"),
            ["-- a; comment\nCREATE TABLE t (x text DEFAULT ';')"]
        );
        assert_eq!(
            split_statements("DO $$ BEGIN; END $$; SELECT 1;"),
            ["DO $$ BEGIN; END $$", " SELECT 1"]
        );
    }

    #[test]
    fn scans_messages_across_chunks() {
        // ReadyForQuery ('Z', len 5, 'I'), then a DataRow split in two.
        let bytes = [b'Z', 0, 0, 0, 5, b'I', b'D', 0, 0, 0, 6, 0, 1];
        let mut tags = Vec::new();
        let mut scan = Scan::default();
        scan.feed(&bytes[..3], |t| tags.push(t));
        scan.feed(&bytes[3..9], |t| tags.push(t));
        scan.feed(&bytes[9..], |t| tags.push(t));
        assert_eq!(tags, [b'Z', b'D']);
    }

    #[test]
    fn hides_database_names() {
        assert_eq!(
            hide_names("DROP DATABASE IF EXISTS \"x_1\" WITH (FORCE)"),
            "DROP DATABASE IF EXISTS \"…\" WITH (FORCE)"
        );
    }

    #[test]
    fn kinds() {
        assert_eq!(kind("SELECT count(*) FROM users"), "workload");
        assert_eq!(kind("RELEASE SAVEPOINT dbt_auto"), "transaction");
        assert_eq!(kind("create database \"x\""), "database");
        assert_eq!(kind("CREATE TABLE users ()"), "setup");
    }
}
