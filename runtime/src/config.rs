//! Settings read from the environment. Each has a default that suits a
//! laptop and CI; the README lists them.

use std::time::Duration;

/// Each setting is read once per process: some are on every test's path.
macro_rules! cached {
    ($ty:ty, $init:expr) => {{
        static CELL: std::sync::OnceLock<$ty> = std::sync::OnceLock::new();
        CELL.get_or_init(|| $init).clone()
    }};
}

fn env_parse<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

fn env_duration(name: &str, default: Duration) -> Duration {
    std::env::var(name)
        .ok()
        .and_then(|v| crate::duration::parse_duration_ms(&v))
        .map(Duration::from_millis)
        .unwrap_or(default)
}

/// Threads of libtest: its `--test-threads` argument, else
/// `RUST_TEST_THREADS`, else the machine's parallelism (libtest's order).
pub(crate) fn test_threads() -> usize {
    cached!(usize, {
        test_threads_arg(std::env::args())
            .or_else(|| env_parse("RUST_TEST_THREADS"))
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
            .max(1)
    })
}

/// libtest's `--test-threads=N` or `--test-threads N` among `args` (the
/// last one wins, as in libtest's option parser).
fn test_threads_arg(args: impl Iterator<Item = String>) -> Option<usize> {
    let mut found = None;
    let mut args = args.skip(1);
    while let Some(arg) = args.next() {
        if arg == "--" {
            break;
        }
        let value = match arg.strip_prefix("--test-threads") {
            Some("") => args.next(),
            Some(rest) => match rest.strip_prefix('=') {
                Some(v) => Some(v.to_string()),
                None => continue,
            },
            None => continue,
        };
        if let Some(n) = value.and_then(|v| v.trim().parse().ok()) {
            found = Some(n);
        }
    }
    found
}

/// How many tests of this process run at once at most: one under nextest
/// (a process per test), else [`test_threads`].
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn tests_at_once() -> usize {
    cached!(usize, {
        if process_per_test() {
            1
        } else {
            test_threads()
        }
    })
}

/// Whether this process runs one test only (nextest's process per test).
#[cfg_attr(not(feature = "mysql"), allow(dead_code))]
pub(crate) fn process_per_test() -> bool {
    std::env::var_os("NEXTEST_EXECUTION_MODE").is_some_and(|m| m == "process-per-test")
}

/// `DB_TEST_WORKER_THREADS`: worker threads of the shared runtime.
pub(crate) fn worker_threads() -> usize {
    cached!(usize, {
        env_parse("DB_TEST_WORKER_THREADS")
            .unwrap_or_else(|| {
                std::thread::available_parallelism()
                    .map(|n| n.get())
                    .unwrap_or(2)
            })
            .max(2)
    })
}

/// `DB_TEST_POOL_SIZE`: connections per working database (default: test threads + 4).
pub(crate) fn pool_size() -> u32 {
    cached!(u32, {
        env_parse("DB_TEST_POOL_SIZE")
            .unwrap_or(test_threads() as u32 + 4)
            .max(1)
    })
}

/// `DB_TEST_ACQUIRE_TIMEOUT`: how long a test waits for a pooled connection (default 30s).
pub(crate) fn acquire_timeout() -> Duration {
    cached!(Duration, {
        env_duration("DB_TEST_ACQUIRE_TIMEOUT", Duration::from_secs(30))
    })
}

/// `DB_TEST_CONNECT_TIMEOUT`: how long connecting to the server may take (default 5s).
pub(crate) fn connect_timeout() -> Duration {
    cached!(Duration, {
        env_duration("DB_TEST_CONNECT_TIMEOUT", Duration::from_secs(5))
    })
}

/// `DB_TEST_CHECKOUT_TIMEOUT`: how long a task waits for the test's busy connection (default 10s).
pub(crate) fn checkout_timeout() -> Duration {
    cached!(Duration, {
        env_duration("DB_TEST_CHECKOUT_TIMEOUT", Duration::from_secs(10))
    })
}

/// `DB_TEST_LOCK_TIMEOUT`: the server's `lock_timeout` on test connections (default 5s).
pub(crate) fn lock_timeout() -> String {
    cached!(String, {
        let d = env_duration("DB_TEST_LOCK_TIMEOUT", Duration::from_secs(5));
        format!("{}ms", d.as_millis())
    })
}

/// `DB_TEST_TIMEOUT`: the default test timeout (default 60s); `timeout = ".."` overrides it.
pub(crate) fn default_test_timeout() -> Duration {
    cached!(Duration, {
        env_duration("DB_TEST_TIMEOUT", Duration::from_secs(60))
    })
}

/// `DB_TEST_MAX_DATABASES`: per-test databases cloned at once (default 4).
pub(crate) fn max_databases() -> usize {
    cached!(usize, {
        env_parse("DB_TEST_MAX_DATABASES").unwrap_or(4).max(1)
    })
}

/// `DB_TEST_DATABASE_POOL_SIZE`: connections of a per-test database's pool (default 5).
pub(crate) fn database_pool_size() -> u32 {
    cached!(u32, {
        env_parse("DB_TEST_DATABASE_POOL_SIZE").unwrap_or(5).max(1)
    })
}

/// `DB_TEST_KEEP_FAILED=1`: keep a failed database-mode test's database.
pub(crate) fn keep_failed() -> bool {
    cached!(bool, {
        matches!(
            std::env::var("DB_TEST_KEEP_FAILED").as_deref(),
            Ok("1") | Ok("true") | Ok("yes")
        )
    })
}

/// `DB_TEST_OUTDATED_AFTER`: how old a template of outdated migrations must be
/// before it is dropped (default 10m), so that two checkouts with different
/// migrations can share a server.
pub(crate) fn outdated_after() -> Duration {
    cached!(Duration, {
        env_duration("DB_TEST_OUTDATED_AFTER", Duration::from_secs(600))
    })
}

/// The URL of the server a backend's tests use, and the variable it came
/// from: `DB_TEST_<BACKEND>_URL`, else `DATABASE_URL` (from the environment,
/// then from a `.env` file in the current directory or one of its parents).
/// `None`: no URL, use the embedded server. A URL of another database is an
/// error naming both.
pub(crate) fn server_url(backend: crate::Backend) -> Result<Option<(String, String)>, String> {
    let own = backend.url_var();
    if let Ok(url) = std::env::var(own)
        && !url.trim().is_empty()
    {
        return check_scheme(backend, own, url).map(Some);
    }
    match database_url() {
        // `#[sqlx::test]` never reads `DATABASE_URL` on SQLite: a suite with
        // tests on two databases keeps the server's URL there (for its
        // server tests and the query macros), and its SQLite tests run.
        Some(url)
            if backend == crate::Backend::Sqlite
                && !url.trim_start().to_ascii_lowercase().starts_with("sqlite:") =>
        {
            Ok(None)
        }
        Some(url) => check_scheme(backend, "DATABASE_URL", url).map(Some),
        None => Ok(None),
    }
}

fn check_scheme(
    backend: crate::Backend,
    var: &str,
    url: String,
) -> Result<(String, String), String> {
    let scheme = url.split(':').next().unwrap_or("").to_ascii_lowercase();
    if backend.schemes().contains(&scheme.as_str()) {
        return Ok((var.to_string(), url));
    }
    let display = crate::postgres::engine::redact(&url);
    let named = [
        crate::Backend::Postgres,
        crate::Backend::MySql,
        crate::Backend::Sqlite,
    ]
    .into_iter()
    .find(|b| b.schemes().contains(&scheme.as_str()))
    .map(|b| format!("a {} URL", b.name()))
    .unwrap_or_else(|| match url.find("://") {
        Some(_) => format!("not a URL db-test knows (scheme `{scheme}`)"),
        // A libpq `key=value` string, say: no scheme to show.
        None => "not a URL db-test knows (it needs `scheme://...`)".to_string(),
    });
    let schemes = backend
        .schemes()
        .iter()
        .map(|s| format!("`{s}:`"))
        .collect::<Vec<_>>()
        .join(" or ");
    Err(format!(
        "db-test: {var}={display} is {named}, but this test runs on {}, which needs {schemes}. \
         Set {} to a {} URL for these tests{}",
        backend.name(),
        backend.url_var(),
        backend.name(),
        if var == "DATABASE_URL" {
            ", or unset DATABASE_URL to use the embedded server".to_string()
        } else {
            String::new()
        }
    ))
}

/// Reads `DATABASE_URL` from the environment, then from a `.env` file in the
/// current directory or one of its parents.
fn database_url() -> Option<String> {
    if let Ok(url) = std::env::var("DATABASE_URL") {
        if !url.trim().is_empty() {
            return Some(url);
        }
        return None;
    }
    // The first `.env` in the current directory or a parent, read by the
    // crate sqlx's own test support reads it with (quotes, `export`,
    // comments, spaces around `=`), without changing the environment.
    dotenvy::dotenv_iter()
        .ok()?
        .filter_map(Result::ok)
        .find(|(key, _)| key == "DATABASE_URL")
        .map(|(_, value)| value)
        .filter(|value| !value.trim().is_empty())
}

/// How long a test process waits for another to finish building a template
/// (their migrations run meanwhile) before it fails, naming the session that
/// holds the build's lock.
pub(crate) const TEMPLATE_LOCK_WAIT: Duration = Duration::from_secs(300);

/// Every `DB_TEST_*` setting that is set, checked once per process before
/// the first test: a value db-test cannot read fails the tests, naming the
/// variable and what it takes, instead of being replaced by the default
/// (`DB_TEST_OUTDATED_AFTER=never` would have dropped templates after 10
/// minutes).
pub(crate) fn check_settings() -> Result<(), String> {
    cached!(Result<(), String>, {
        const COUNTS: [&str; 4] = [
            "DB_TEST_WORKER_THREADS",
            "DB_TEST_POOL_SIZE",
            "DB_TEST_MAX_DATABASES",
            "DB_TEST_DATABASE_POOL_SIZE",
        ];
        const SECONDS: [&str; 2] = ["DB_TEST_PG_IDLE_SECS", "DB_TEST_MYSQL_IDLE_SECS"];
        const DURATIONS: [&str; 6] = [
            "DB_TEST_TIMEOUT",
            "DB_TEST_ACQUIRE_TIMEOUT",
            "DB_TEST_CONNECT_TIMEOUT",
            "DB_TEST_CHECKOUT_TIMEOUT",
            "DB_TEST_LOCK_TIMEOUT",
            "DB_TEST_OUTDATED_AFTER",
        ];
        let set = |name: &str| std::env::var(name).ok();
        let bad = |name: &str, value: &str, takes: &str| {
            Err(format!(
                "db-test: {name}={value:?} is not a value db-test can use: it takes {takes}. \
                 Fix or unset it."
            ))
        };
        for name in COUNTS {
            if let Some(v) = set(name)
                && !v.trim().parse::<u64>().is_ok_and(|n| n >= 1)
            {
                return bad(name, &v, "a whole number of at least 1, such as `4`");
            }
        }
        for name in SECONDS {
            if let Some(v) = set(name)
                && v.parse::<u64>().is_err()
            {
                return bad(name, &v, "a whole number of seconds, such as `600`");
            }
        }
        for name in DURATIONS {
            if let Some(v) = set(name)
                && crate::duration::parse_duration_ms(&v).is_none()
            {
                return bad(
                    name,
                    &v,
                    "a duration of at least 1 ms: a number and `ms`, `s`, `m` or `h`, such as \
                     `30s` or `1.5m` (no unit means seconds)",
                );
            }
        }
        if let Some(v) = set("DB_TEST_KEEP_FAILED")
            && !matches!(v.as_str(), "" | "0" | "1" | "true" | "false" | "yes" | "no")
        {
            return bad("DB_TEST_KEEP_FAILED", &v, "`1` (or `true`, `yes`) to keep, `0` not to");
        }
        if let Some(v) = set("DB_TEST_DATA_DIR")
            && v.trim().is_empty()
        {
            return bad("DB_TEST_DATA_DIR", &v, "a directory; unset it for the default");
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::test_threads_arg;

    fn parse(args: &[&str]) -> Option<usize> {
        test_threads_arg(
            std::iter::once("suite")
                .chain(args.iter().copied())
                .map(String::from),
        )
    }

    #[test]
    fn the_test_threads_argument_is_read_in_both_spellings() {
        assert_eq!(parse(&["--test-threads=1"]), Some(1));
        assert_eq!(parse(&["-q", "--test-threads", "3", "name"]), Some(3));
        assert_eq!(
            parse(&["--test-threads=1", "--test-threads=4"]),
            Some(4),
            "the last one wins"
        );
    }

    #[test]
    fn other_arguments_are_not_taken_for_test_threads() {
        assert_eq!(parse(&[]), None);
        assert_eq!(parse(&["--test-threadsX=2", "test_threads"]), None);
        assert_eq!(parse(&["--test-threads=many"]), None);
        assert_eq!(parse(&["--", "--test-threads=2"]), None);
    }
}
