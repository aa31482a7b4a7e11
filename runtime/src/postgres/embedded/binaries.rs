//! Finding the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`)
//! and their major version, remembered in `bin-<key>.cache` of the base directory.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::short_hash;

const SERVER_BINARIES: [&str; 3] = ["initdb", "pg_ctl", "postgres"];

fn has_server_binaries(dir: &Path) -> bool {
    SERVER_BINARIES.iter().all(|b| dir.join(b).is_file())
}

/// Finds a directory holding `initdb`, `pg_ctl` and `postgres`.
fn find_bin_dir() -> Result<PathBuf, String> {
    search_bin_dir(
        std::env::var_os("DB_TEST_PG_BIN").filter(|v| !v.is_empty()),
        std::env::var_os("PATH"),
        Path::new("/usr/lib/postgresql"),
    )
}

/// The search behind [`find_bin_dir`]: `explicit` (`DB_TEST_PG_BIN`) if
/// given, and only it; otherwise `pg_config --bindir` (the first `pg_config`
/// on `path`), the directories of `path`, then `versions/*/bin`, newest
/// major version first.
fn search_bin_dir(
    explicit: Option<std::ffi::OsString>,
    path: Option<std::ffi::OsString>,
    versions: &Path,
) -> Result<PathBuf, String> {
    if let Some(dir) = explicit {
        let dir = PathBuf::from(dir);
        if has_server_binaries(&dir) {
            return Ok(dir);
        }
        let missing: Vec<&str> = SERVER_BINARIES
            .into_iter()
            .filter(|b| !dir.join(b).is_file())
            .collect();
        return Err(format!(
            "db-test: DB_TEST_PG_BIN={} does not hold the PostgreSQL server binaries \
             (missing: {}). Fix: point DB_TEST_PG_BIN at the bin directory of a PostgreSQL \
             installation (the output of `pg_config --bindir`, e.g. /usr/lib/postgresql/16/bin), \
             or unset it to search pg_config, PATH and /usr/lib/postgresql/*/bin.",
            dir.display(),
            missing.join(", ")
        ));
    }
    let mut searched = Vec::new();
    let path_dirs: Vec<PathBuf> = path
        .as_deref()
        .map(|p| std::env::split_paths(p).collect())
        .unwrap_or_default();
    match path_dirs
        .iter()
        .map(|d| d.join("pg_config"))
        .find(|p| p.is_file())
    {
        Some(pg_config) => match Command::new(&pg_config)
            .arg("--bindir")
            .stderr(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_server_binaries(&dir) {
                    return Ok(dir);
                }
                searched.push(format!("pg_config --bindir ({})", dir.display()));
            }
            _ => searched.push(format!("{} --bindir (failed)", pg_config.display())),
        },
        None => searched.push("pg_config --bindir (no pg_config on PATH)".into()),
    }
    if let Some(dir) = path_dirs.iter().find(|d| has_server_binaries(d)) {
        return Ok(dir.clone());
    }
    searched.push("PATH".into());
    let mut found: Vec<(u32, PathBuf)> = fs::read_dir(versions)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .collect();
    found.sort_by_key(|v| std::cmp::Reverse(v.0));
    if let Some((_, dir)) = found.into_iter().find(|(_, d)| has_server_binaries(d)) {
        return Ok(dir);
    }
    searched.push(format!("{}/*/bin", versions.display()));
    Err(format!(
        "db-test: DATABASE_URL is not set, so db-test wants to start an embedded PostgreSQL, \
         but found no PostgreSQL server binaries (initdb, pg_ctl, postgres). Searched: {}. \
         Fix: install PostgreSQL (e.g. `apt-get install postgresql`, `brew install postgresql`), \
         or point DB_TEST_PG_BIN at its bin directory, or set DATABASE_URL to a running server.",
        searched.join(", ")
    ))
}

fn major_version(bin: &Path) -> Result<String, String> {
    let out = Command::new(bin.join("postgres"))
        .arg("--version")
        .output()
        .map_err(|e| {
            format!(
                "db-test: cannot run {}: {e}",
                bin.join("postgres").display()
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "postgres (PostgreSQL) 15.4 (Debian ...)"
    text.split_whitespace()
        .find_map(|w| {
            w.split('.')
                .next()
                .filter(|m| m.chars().all(|c| c.is_ascii_digit()) && !m.is_empty())
        })
        .map(str::to_owned)
        .ok_or_else(|| format!("db-test: cannot parse `postgres --version` output: {text}"))
}

/// The binaries and their major version, remembered in
/// `base/bin-<key>.cache`, a file per `DB_TEST_PG_BIN` and `PATH`: finding
/// them spawns `pg_config` and `postgres --version`, 10-20 ms that every
/// nextest process would pay (with one file for all, runs with two `PATH`s,
/// a shell's and cargo's, paid it in every process).
pub(super) fn binaries(base: &Path) -> Result<(PathBuf, String), String> {
    let key = format!(
        "{}|{}",
        std::env::var("DB_TEST_PG_BIN").unwrap_or_default(),
        std::env::var("PATH").unwrap_or_default()
    );
    let key = short_hash(key.as_bytes());
    let cache = base.join(format!("bin-{key}.cache"));
    if let Ok(text) = fs::read_to_string(&cache) {
        let lines: Vec<&str> = text.lines().collect();
        if let [k, bin, major] = lines[..] {
            let bin = PathBuf::from(bin);
            if k == key && bin.join("postgres").is_file() && bin.join("initdb").is_file() {
                return Ok((bin, major.to_string()));
            }
        }
    }
    let bin = find_bin_dir()?;
    let major = major_version(&bin)?;
    let _ = fs::write(&cache, format!("{key}\n{}\n{major}\n", bin.display()));
    Ok((bin, major))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh, empty directory for one test.
    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("db-test-bins-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A directory that looks like a PostgreSQL bin directory to the search
    /// (it only checks that the three files exist).
    fn bin_dir(dir: &Path) -> PathBuf {
        fs::create_dir_all(dir).unwrap();
        for b in SERVER_BINARIES {
            fs::write(dir.join(b), "").unwrap();
        }
        dir.to_path_buf()
    }

    #[test]
    fn nothing_found_says_what_was_searched_and_how_to_fix_it() {
        let root = scratch("none");
        let empty_path = root.join("path");
        fs::create_dir_all(&empty_path).unwrap();
        let err = search_bin_dir(
            None,
            Some(empty_path.clone().into_os_string()),
            &root.join("no-such-dir"),
        )
        .unwrap_err();
        assert!(err.contains("DATABASE_URL is not set"), "{err}");
        assert!(err.contains("no pg_config on PATH"), "{err}");
        assert!(err.contains("PATH"), "{err}");
        assert!(
            err.contains(&format!("{}/*/bin", root.join("no-such-dir").display())),
            "{err}"
        );
        assert!(err.contains("install PostgreSQL"), "{err}");
        assert!(err.contains("DB_TEST_PG_BIN"), "{err}");
        assert!(err.contains("set DATABASE_URL"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_explicit_dir_without_binaries_is_an_error_not_a_fallback() {
        let root = scratch("explicit");
        let half = root.join("half");
        fs::create_dir_all(&half).unwrap();
        fs::write(half.join("postgres"), "").unwrap();
        // A usable directory on PATH must not be picked instead.
        let on_path = bin_dir(&root.join("on-path"));
        let err = search_bin_dir(
            Some(half.clone().into_os_string()),
            Some(on_path.into_os_string()),
            &root,
        )
        .unwrap_err();
        assert!(
            err.contains(&format!("DB_TEST_PG_BIN={}", half.display())),
            "{err}"
        );
        assert!(err.contains("missing: initdb, pg_ctl"), "{err}");
        let good = bin_dir(&root.join("good"));
        assert_eq!(
            search_bin_dir(Some(good.clone().into_os_string()), None, &root).unwrap(),
            good
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn path_comes_before_versioned_dirs_and_the_newest_version_wins() {
        let root = scratch("order");
        let versions = root.join("postgresql");
        bin_dir(&versions.join("9.6/bin"));
        let v17 = bin_dir(&versions.join("17/bin"));
        bin_dir(&versions.join("16/bin"));
        fs::create_dir_all(versions.join("not-a-version/bin")).unwrap();
        let empty = root.join("empty");
        fs::create_dir_all(&empty).unwrap();
        assert_eq!(
            search_bin_dir(None, Some(empty.clone().into_os_string()), &versions).unwrap(),
            v17
        );
        let on_path = bin_dir(&root.join("on-path"));
        let path = std::env::join_paths([empty, on_path.clone()]).unwrap();
        assert_eq!(
            search_bin_dir(None, Some(path), &versions).unwrap(),
            on_path
        );
        fs::remove_dir_all(&root).unwrap();
    }
}
