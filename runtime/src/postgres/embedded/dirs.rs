//! Where everything of the embedded server lives ([`Layout`], [`layout`]),
//! and the rules its directories must pass ([`DirRule`]): checked without
//! following symbolic links, created and handed over only through
//! descriptors opened with `O_NOFOLLOW`.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::binaries::binaries;
use super::{egid, euid, short_hash};

/// Names the cluster directory (`pg16-v2`). Bumped when the layout or its
/// rules change, so that a new db-test never adopts, or fights over, a server
/// that an older one started under other rules (version 1 had a world-writable
/// socket and a shell reaper that used `flock(1)`; version 2's cluster had
/// an ASCII-only `LC_CTYPE`, see `init_cluster`).
const LAYOUT_VERSION: u32 = 3;

pub(super) struct Layout {
    pub(super) bin: PathBuf,
    pub(super) root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) socket: PathBuf,
    /// When we are root: the unprivileged user (uid, gid) the server runs as.
    pub(super) run_as: Option<(u32, u32)>,
}

impl Layout {
    /// The user (uid, gid) that owns the server's directories and processes.
    pub(super) fn server_user(&self) -> (u32, u32) {
        self.run_as.unwrap_or_else(|| (euid(), egid()))
    }

    /// The socket directory: the server user's alone.
    pub(super) fn socket_rule(&self) -> DirRule {
        DirRule::private("socket directory", self.server_user())
    }

    /// The data directory: the server user's alone.
    pub(super) fn data_rule(&self, what: &'static str) -> DirRule {
        DirRule::private(what, self.server_user())
    }
}

/// The unprivileged user to run the server as, when we are root.
fn unprivileged_user() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))?
        })
    };
    find("postgres")
        .or_else(|| find("nobody"))
        .unwrap_or((65534, 65534))
}

/// `name (uid N)` for messages, or `uid N` for a uid without a name.
fn user_label(uid: u32) -> String {
    let passwd = fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
    });
    match name {
        Some(name) => format!("{name} (uid {uid})"),
        None => format!("uid {uid}"),
    }
}

/// What a directory of the embedded server must look like.
#[derive(Debug, Clone, Copy)]
pub(super) struct DirRule {
    /// What to call it in messages, such as "socket directory".
    what: &'static str,
    /// The owner (uid, gid) it must have, and gets when db-test creates it.
    owner: (u32, u32),
    /// Its mode when db-test creates it.
    mode: u32,
    /// Permission bits it must not have.
    forbidden: u32,
    /// The server user must be able to pass through it (as root).
    traverse: bool,
}

impl DirRule {
    /// Only `owner` may enter it: mode 0700, nothing for group and others.
    fn private(what: &'static str, owner: (u32, u32)) -> DirRule {
        DirRule {
            what,
            owner,
            mode: 0o700,
            forbidden: 0o077,
            traverse: false,
        }
    }

    /// Ours and writable by nobody else; as root (`traverse`), 0755 so that
    /// the unprivileged server user can pass through to its own directories.
    pub(super) fn ours(what: &'static str, traverse: bool) -> DirRule {
        DirRule {
            what,
            owner: (euid(), egid()),
            mode: if traverse { 0o755 } else { 0o700 },
            forbidden: 0o022,
            traverse,
        }
    }
}

/// Checks, without following a symbolic link, that `path` is a directory
/// owned by `rule.owner` without any of the `rule.forbidden` mode bits.
/// The error says what is wrong, with which path, and how to fix it.
pub(super) fn check_dir(path: &Path, rule: &DirRule) -> Result<(), String> {
    let meta = fs::symlink_metadata(path).map_err(|e| {
        format!(
            "db-test: cannot inspect the embedded PostgreSQL's {} {}: {e}",
            rule.what,
            path.display()
        )
    })?;
    let mut wrong = Vec::new();
    if meta.file_type().is_symlink() {
        let target = fs::read_link(path)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "?".into());
        wrong.push(format!("a symbolic link (to {target})"));
    } else if !meta.is_dir() {
        wrong.push("not a directory".to_string());
    } else {
        if meta.uid() != rule.owner.0 {
            wrong.push(format!(
                "owned by {}, not by {}",
                user_label(meta.uid()),
                user_label(rule.owner.0)
            ));
        }
        let mode = meta.mode() & 0o7777;
        if mode & rule.forbidden != 0 {
            wrong.push(format!(
                "mode {mode:04o}, which lets other users {} it",
                if mode & rule.forbidden & 0o022 != 0 {
                    "write into"
                } else {
                    "look into"
                }
            ));
        }
    }
    if wrong.is_empty() {
        return Ok(());
    }
    Err(format!(
        "db-test: refusing to use {} as the embedded PostgreSQL's {}: it is {}. The embedded \
         server lets whoever reaches its socket in as superuser, so db-test only uses a {} that \
         is a real directory (not a symbolic link), owned by {}, with mode {:04o} or stricter; \
         this one may have been prepared by another local user to get into the server. \
         Fix: look at it (`ls -ld {}`); if you did not make it so, remove it (`rm -rf {}`) and \
         run again, or set DB_TEST_DATA_DIR to a directory of your own.",
        path.display(),
        rule.what,
        wrong.join(" and "),
        rule.what,
        user_label(rule.owner.0),
        0o777 & !rule.forbidden,
        path.display(),
        path.display(),
    ))
}

/// Creates the directory `path` as `rule` says unless it exists, then checks
/// it with [`check_dir`].
///
/// Mode and owner are only ever changed through a descriptor opened with
/// `O_NOFOLLOW` (never through a symbolic link), and only on a directory that
/// the effective user owns: the one just created, or one that an earlier run
/// created as root and did not get to hand over to the server user.
pub(super) fn ensure_dir(path: &Path, rule: &DirRule) -> Result<(), String> {
    let created = match DirBuilder::new().mode(rule.mode).create(path) {
        Ok(()) => true,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => false,
        Err(e) => {
            return Err(format!(
                "db-test: cannot create the embedded PostgreSQL's {} {}: {e}",
                rule.what,
                path.display()
            ));
        }
    };
    if let Ok(meta) = fs::symlink_metadata(path) {
        let mode = meta.mode() & 0o7777;
        // `is_dir` of symlink_metadata is false for a symbolic link.
        let ours = meta.is_dir() && meta.uid() == euid() && (created || mode & rule.forbidden == 0);
        let new_mode = if created {
            // The umask may have taken bits off (or there may be a default ACL).
            Some(rule.mode)
        } else if rule.traverse && mode & 0o011 != 0o011 {
            Some(mode | 0o011)
        } else {
            None
        };
        if ours && (created || new_mode.is_some() || meta.uid() != rule.owner.0) {
            adopt(path, &meta, new_mode, rule)?;
        }
    }
    check_dir(path, rule)
}

/// Sets the mode and owner of a directory we own, through a descriptor
/// opened without following links, after checking that it is still the
/// directory `before` describes.
fn adopt(
    path: &Path,
    before: &fs::Metadata,
    mode: Option<u32>,
    rule: &DirRule,
) -> Result<(), String> {
    let fail = |e: std::io::Error| {
        format!(
            "db-test: cannot set up the embedded PostgreSQL's {} {}: {e}",
            rule.what,
            path.display()
        )
    };
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
        .map_err(fail)?;
    let now = dir.metadata().map_err(fail)?;
    if (now.dev(), now.ino(), now.uid()) != (before.dev(), before.ino(), before.uid()) {
        return Err(fail(std::io::Error::other(
            "it was replaced while db-test was setting it up",
        )));
    }
    if let Some(mode) = mode {
        dir.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(fail)?;
    }
    if now.uid() != rule.owner.0 {
        std::os::unix::fs::fchown(&dir, Some(rule.owner.0), Some(rule.owner.1)).map_err(fail)?;
    }
    Ok(())
}

/// The directory that holds everything of the embedded server. It must be
/// ours and writable by nobody else, since db-test keeps its lock files and
/// the cluster in it. A symbolic link that we (or root) made, to keep the
/// cache elsewhere, is followed; one that another user made is refused.
fn ensure_base(base: &Path, traverse: bool) -> Result<(), String> {
    let rule = DirRule::ours("base directory (DB_TEST_DATA_DIR or its default)", traverse);
    if let Ok(link) = fs::symlink_metadata(base)
        && link.file_type().is_symlink()
    {
        if link.uid() != euid() && link.uid() != 0 {
            return check_dir(base, &rule);
        }
        let target = fs::canonicalize(base).map_err(|e| {
            format!(
                "db-test: cannot follow {} (DB_TEST_DATA_DIR or the cache directory): {e}",
                base.display()
            )
        })?;
        return ensure_dir(&target, &rule);
    }
    if let Some(parent) = base.parent() {
        let _ = fs::create_dir_all(parent);
    }
    ensure_dir(base, &rule)
}

/// Opens (creating it 0600) a lock or log file in a directory checked by
/// [`ensure_dir`], never through a symbolic link.
pub(super) fn open_private_file(path: &Path, append: bool) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(!append)
        .append(append)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Where everything lives. Creates and checks the base directory (it holds
/// the binaries cache), not the others.
pub(super) fn layout() -> Result<Layout, String> {
    let uid = euid();
    let base = if let Some(dir) = std::env::var_os("DB_TEST_DATA_DIR") {
        PathBuf::from(dir)
    } else if uid == 0 {
        PathBuf::from("/var/tmp/db-test-root")
    } else if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        PathBuf::from(dir).join("db-test")
    } else if let Some(home) = std::env::var_os("HOME") {
        PathBuf::from(home).join(".cache/db-test")
    } else {
        PathBuf::from(format!("/tmp/db-test-{uid}"))
    };
    let run_as = (uid == 0).then(unprivileged_user);
    ensure_base(&base, run_as.is_some())?;
    let (bin, major) = binaries(&base)?;
    let root = base.join(format!("pg{major}-v{LAYOUT_VERSION}"));
    // Socket paths are limited to 107 bytes: keep the directory short, and
    // distinct per data directory. Its name is predictable, so it is checked
    // before every use (see `ensure_dir`).
    let tag = short_hash(root.to_string_lossy().as_bytes());
    let socket = PathBuf::from(format!("/tmp/dbt-{uid}-{}", &tag[..8]));
    Ok(Layout {
        bin,
        data: root.join("data"),
        root,
        socket,
        run_as,
    })
}

#[cfg(test)]
mod safety_tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fresh, empty directory for one test (0755, ours).
    fn scratch(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("db-test-safety-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    fn mode(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    fn me() -> (u32, u32) {
        (euid(), egid())
    }

    #[test]
    fn a_socket_dir_open_to_other_users_is_refused_not_fixed() {
        let root = scratch("open");
        let dir = root.join("dbt-sock");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        let err = ensure_dir(&dir, &DirRule::private("socket directory", me())).unwrap_err();
        assert!(
            err.contains(&format!("refusing to use {}", dir.display())),
            "{err}"
        );
        assert!(err.contains("socket directory"), "{err}");
        assert!(
            err.contains("mode 0777, which lets other users write into it"),
            "{err}"
        );
        assert!(err.contains("with mode 0700 or stricter"), "{err}");
        assert!(err.contains(&format!("rm -rf {}", dir.display())), "{err}");
        assert_eq!(
            mode(&dir),
            0o777,
            "a dir we did not create is never chmod-ed"
        );
        // Readable by others is refused as well.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let err = ensure_dir(&dir, &DirRule::private("socket directory", me())).unwrap_err();
        assert!(
            err.contains("mode 0755, which lets other users look into it"),
            "{err}"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_symlink_is_refused_and_never_followed_by_chmod_or_chown() {
        let root = scratch("link");
        let target = root.join("elsewhere");
        fs::create_dir(&target).unwrap();
        fs::set_permissions(&target, fs::Permissions::from_mode(0o700)).unwrap();
        let link = root.join("dbt-sock");
        symlink(&target, &link).unwrap();
        // As root the rule hands the directory to another user: the old code
        // chowned (and chmod-ed) through the link.
        let owner = if euid() == 0 { (65534, 65534) } else { me() };
        for rule in [
            DirRule::private("socket directory", owner),
            DirRule::ours("cluster directory", true),
        ] {
            let err = ensure_dir(&link, &rule).unwrap_err();
            assert!(
                err.contains(&format!("a symbolic link (to {})", target.display())),
                "{err}"
            );
            let meta = fs::metadata(&target).unwrap();
            assert_eq!(meta.uid(), euid(), "chown followed the link");
            assert_eq!(meta.mode() & 0o7777, 0o700, "chmod followed the link");
        }
        // A symbolic link in place of the data directory is refused too.
        let err = check_dir(&link, &DirRule::private("data directory", me())).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_dir_owned_by_another_user_is_refused() {
        let (dir, cleanup) = if euid() == 0 {
            let root = scratch("owner");
            let dir = root.join("dbt-sock");
            fs::create_dir(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
            std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
            (dir, Some(root))
        } else {
            // Not root: a directory of root's stands in for another user's.
            (PathBuf::from("/"), None)
        };
        let err = ensure_dir(&dir, &DirRule::private("socket directory", me())).unwrap_err();
        let other = fs::symlink_metadata(&dir).unwrap().uid();
        assert!(
            err.contains(&format!(
                "owned by {}, not by {}",
                user_label(other),
                user_label(euid())
            )),
            "{err}"
        );
        if let Some(root) = cleanup {
            fs::remove_dir_all(&root).unwrap();
        }
    }

    #[test]
    fn a_new_dir_is_private_and_as_root_belongs_to_the_server_user() {
        let root = scratch("new");
        let owner = if euid() == 0 { (65534, 65534) } else { me() };
        let rule = DirRule::private("socket directory", owner);
        let dir = root.join("dbt-sock");
        ensure_dir(&dir, &rule).unwrap();
        let meta = fs::symlink_metadata(&dir).unwrap();
        assert_eq!((meta.uid(), meta.gid()), owner);
        assert_eq!(meta.mode() & 0o7777, 0o700);
        // Once made, it is used as it is.
        ensure_dir(&dir, &rule).unwrap();
        if euid() == 0 {
            // A directory an earlier run made (as root) and did not hand
            // over is adopted; the same with an open mode is refused.
            let left = root.join("left");
            fs::create_dir(&left).unwrap();
            fs::set_permissions(&left, fs::Permissions::from_mode(0o700)).unwrap();
            ensure_dir(&left, &rule).unwrap();
            assert_eq!(fs::symlink_metadata(&left).unwrap().uid(), 65534);
            let open = root.join("open");
            fs::create_dir(&open).unwrap();
            fs::set_permissions(&open, fs::Permissions::from_mode(0o777)).unwrap();
            assert!(ensure_dir(&open, &rule).is_err());
            assert_eq!(fs::symlink_metadata(&open).unwrap().uid(), 0);
        }
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_base_dir_link_made_by_another_user_is_refused() {
        if euid() != 0 {
            return; // only root can make a link owned by someone else
        }
        let root = scratch("base");
        let target = root.join("target");
        fs::create_dir(&target).unwrap();
        let link = root.join("db-test-root");
        symlink(&target, &link).unwrap();
        std::os::unix::fs::lchown(&link, Some(65534), Some(65534)).unwrap();
        let err = ensure_base(&link, true).unwrap_err();
        assert!(err.contains("symbolic link"), "{err}");
        // The same link made by us (a user keeping the cache elsewhere) is followed.
        std::os::unix::fs::lchown(&link, Some(0), Some(0)).unwrap();
        ensure_base(&link, true).unwrap();
        fs::remove_dir_all(&root).unwrap();
    }
}
