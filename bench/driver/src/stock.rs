//! A MariaDB/MySQL server with the server's own default settings, for the
//! `mysql-stock` variants: the server a `#[sqlx::test]` suite runs against
//! (a distribution's package or the `mariadb` container image), next to
//! db-test's embedded one, which keeps its data in memory and flushes
//! nothing.
//!
//! The run starts it from the binaries db-test's embedded server uses, with
//! a fresh data directory on disk (`target/db-test-bench/mysql-stock`),
//! `--no-defaults` and only what does not change how it stores data: a Unix
//! socket in a private directory instead of TCP, a private tmpdir, and
//! Debian's `utf8mb4` character set. So InnoDB flushes its log at every
//! commit, the doublewrite buffer is on, the buffer pool is 128 MiB. The
//! server dies with the thread that started it (`PR_SET_PDEATHSIG`), and its
//! directory is removed at the end.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Result;

/// The running server; stopped and its directory removed when dropped.
pub struct StockServer {
    child: Child,
    root: PathBuf,
    socket_dir: PathBuf,
    /// `mysql://root@localhost/?socket=...`
    pub url: url::Url,
}

fn is_root() -> bool {
    fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The install script of a MariaDB server binary: next to it, in `../bin`,
/// or in `/usr/bin`. `None` for MySQL (its server initialises itself).
fn install_script(server: &Path) -> Option<PathBuf> {
    let dir = server.parent().unwrap_or(Path::new("/"));
    [
        dir.join("mariadb-install-db"),
        dir.join("../bin/mariadb-install-db"),
        dir.join("mysql_install_db"),
        dir.join("../bin/mysql_install_db"),
        PathBuf::from("/usr/bin/mariadb-install-db"),
        PathBuf::from("/usr/bin/mysql_install_db"),
    ]
    .into_iter()
    .find(|p| p.is_file())
}

fn is_mariadb(server: &Path) -> bool {
    Command::new(server)
        .arg("--version")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("MariaDB"))
}

impl StockServer {
    /// Initialises a data directory under `root` and starts `server` on it;
    /// returns once it answers on its socket.
    pub fn start(server: &Path, root: &Path) -> Result<StockServer> {
        let _ = fs::remove_dir_all(root);
        let data = root.join("data");
        let tmp = root.join("tmp");
        for dir in [root, &tmp] {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        let root_user = is_root();
        let mut init = if is_mariadb(server) {
            let script = install_script(server).ok_or_else(|| {
                format!(
                    "no mariadb-install-db next to {} or in /usr/bin",
                    server.display()
                )
            })?;
            let mut cmd = Command::new(script);
            cmd.arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"]);
            if let Some(basedir) = server.parent().and_then(Path::parent) {
                cmd.arg(format!("--basedir={}", basedir.display()));
            }
            cmd
        } else {
            let mut cmd = Command::new(server);
            cmd.arg("--no-defaults")
                .arg("--initialize-insecure")
                .arg(format!("--datadir={}", data.display()));
            cmd
        };
        if root_user {
            init.arg("--user=root");
        }
        let out = init
            .current_dir(root)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run the server's initialisation: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initialising {} failed:\n{}{}",
                data.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        // A short path: a socket's must fit in 108 bytes.
        let socket_dir = PathBuf::from(format!("/tmp/dbtb-stock-{}", std::process::id()));
        let _ = fs::remove_dir_all(&socket_dir);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&socket_dir)
            .map_err(|e| format!("cannot create {}: {e}", socket_dir.display()))?;
        let socket = socket_dir.join("mysqld.sock");
        let log = root.join("server.log");
        let mut cmd = Command::new(server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", root.join("server.pid").display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .args([
                "--skip-networking",
                "--character-set-server=utf8mb4",
                "--collation-server=utf8mb4_general_ci",
            ]);
        if root_user {
            cmd.arg("--user=root");
        }
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", server.display()))?;
        let mut url = url::Url::parse("mysql://root@localhost/").expect("a valid URL");
        url.query_pairs_mut()
            .append_pair("socket", &socket.to_string_lossy());
        let mut stock = StockServer {
            child,
            root: root.to_path_buf(),
            socket_dir,
            url,
        };
        let t0 = Instant::now();
        loop {
            if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
                return Ok(stock);
            }
            if let Ok(Some(status)) = stock.child.try_wait() {
                return Err(format!(
                    "the stock-settings server exited ({status}):\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            if t0.elapsed() > Duration::from_secs(60) {
                return Err(format!(
                    "the stock-settings server did not answer within 60 s:\n{}",
                    fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for StockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.root);
        let _ = fs::remove_dir_all(&self.socket_dir);
    }
}
