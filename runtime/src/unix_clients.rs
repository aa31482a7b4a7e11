//! Whether a client is connected to a server's Unix socket, for the idle
//! reapers of the embedded servers: a client that reaches the server through
//! its URL (`server_url`, `DATABASE_URL`) takes no lock, so its connection
//! is what says that the server is in use.
//!
//! On Linux, `/proc/net/unix` lists every Unix socket of the network
//! namespace, one a line: `Num RefCount Protocol Flags Type St Inode Path`.
//! The listening socket shows the path it was bound to, with `St` `01`;
//! each connection the server accepted on it shows the same path, with `St`
//! `03` (connected), until the server closes it; the client's end has no
//! path. So the connections are the lines with `St` `03` whose path is the
//! socket's.
//!
//! Allocation-free and lock-free: the reapers run in a fork of a
//! multi-threaded test process, where only async-signal-safe calls are safe.

use std::ffi::CStr;

use crate::postgres::embedded::errno;

/// The longest line kept whole. A line of `/proc/net/unix` is about 60
/// bytes before its path, and a socket path at most 107 bytes, so a longer
/// line cannot name our socket and is skipped.
const LINE_MAX: usize = 256;

/// Counts, over `/proc/net/unix` fed in chunks of any size, the connections
/// accepted on the socket at `path`.
pub(crate) struct ClientCounter<'a> {
    path: &'a [u8],
    /// The start of the current line (its end is in a later chunk).
    line: [u8; LINE_MAX],
    len: usize,
    /// The current line is longer than [`LINE_MAX`]: skipped.
    too_long: bool,
    count: usize,
}

impl<'a> ClientCounter<'a> {
    /// `path`: the socket's path as the server bound it (no NUL).
    pub(crate) fn new(path: &'a [u8]) -> Self {
        ClientCounter {
            path,
            line: [0; LINE_MAX],
            len: 0,
            too_long: false,
            count: 0,
        }
    }

    /// Takes the next bytes of the file.
    pub(crate) fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            self.push(&chunk[..end]);
            self.end_line();
            chunk = &chunk[end + 1..];
        }
        self.push(chunk);
    }

    /// The connections counted so far (complete lines only).
    pub(crate) fn count(&self) -> usize {
        self.count
    }

    /// The connections, counting a last line without a newline.
    pub(crate) fn finish(mut self) -> usize {
        if self.len > 0 {
            self.end_line();
        }
        self.count
    }

    fn push(&mut self, bytes: &[u8]) {
        if self.too_long || bytes.is_empty() {
            return;
        }
        let Some(room) = self.line.get_mut(self.len..self.len + bytes.len()) else {
            self.too_long = true;
            return;
        };
        room.copy_from_slice(bytes);
        self.len += bytes.len();
    }

    fn end_line(&mut self) {
        if !self.too_long && is_connection_on(&self.line[..self.len], self.path) {
            self.count += 1;
        }
        self.len = 0;
        self.too_long = false;
    }
}

/// Whether a line of `/proc/net/unix` is a connected socket (`St` `03`)
/// bound to exactly `path`: a connection accepted on that socket.
fn is_connection_on(line: &[u8], path: &[u8]) -> bool {
    // Num RefCount Protocol Flags Type St Inode, then " Path" if bound.
    let mut rest = line;
    let mut state = &b""[..];
    for field in 0..7 {
        rest = rest.trim_ascii_start();
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        if field == 5 {
            state = &rest[..end];
        }
        rest = &rest[end..];
    }
    state == b"03" && !path.is_empty() && rest.strip_prefix(b" ") == Some(path)
}

/// Whether a client is connected to the Unix socket at `path` (as the server
/// bound it), according to `/proc/net/unix`. False when that file cannot be
/// read (not Linux): then only the users lock keeps the server alive.
/// Allocation-free and async-signal-safe.
pub(crate) fn clients_connected(path: &CStr) -> bool {
    let mut counter = ClientCounter::new(path.to_bytes());
    let mut buf = [0u8; 4096];
    // SAFETY: plain system calls on a NUL-terminated path, a descriptor we
    // open and close, and our own buffer.
    unsafe {
        let fd = libc::open(c"/proc/net/unix".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return false;
        }
        while counter.count() == 0 {
            let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
            if n < 0 && errno() == Some(libc::EINTR) {
                continue;
            }
            if n <= 0 {
                break;
            }
            counter.feed(&buf[..n as usize]);
        }
        libc::close(fd);
    }
    counter.finish() > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOCKET: &[u8] = b"/tmp/dbtm-1000-abcd1234/mysqld.sock";

    const TABLE: &[u8] = b"\
Num       RefCount Protocol Flags    Type St Inode Path
000000002a5d3d48: 00000002 00000000 00010000 0001 01  4021 /var/run/postgresql/.s.PGSQL.5432
0000000000000000: 00000002 00000000 00010000 0001 01 53728 /tmp/dbtm-1000-abcd1234/mysqld.sock
0000000000000000: 00000003 00000000 00000000 0001 03 53733 /tmp/dbtm-1000-abcd1234/mysqld.sock
0000000000000000: 00000003 00000000 00000000 0001 03 53734
0000000000000000: 00000003 00000000 00000000 0001 03 53735 /tmp/dbtm-1000-abcd1234/mysqld.sock.old
0000000000000000: 00000003 00000000 00000000 0001 03 53736 /tmp/dbtm-1000-abcd1234/mysqld.so
0000000000000000: 00000003 00000000 00000000 0001 03 53737 /run/mysqld/mysqld.sock
0000000000000000: 00000003 00000000 00000000 0001 02     0 /tmp/dbtm-1000-abcd1234/mysqld.sock
0000000000000000: 00000003 00000000 00000000 0001 03 53740 /tmp/dbtm-1000-abcd1234/mysqld.sock
";

    fn count_in(chunks: &[&[u8]], path: &[u8]) -> usize {
        let mut counter = ClientCounter::new(path);
        for chunk in chunks {
            counter.feed(chunk);
        }
        counter.finish()
    }

    #[test]
    fn unix_clients_counts_connections_on_the_exact_path_only() {
        // Two accepted connections; not the listening socket (01), a pending
        // one (02), a client's end (no path), a longer path, a prefix, or
        // another server's socket.
        assert_eq!(count_in(&[TABLE], SOCKET), 2);
        assert_eq!(count_in(&[TABLE], b"/run/mysqld/mysqld.sock"), 1);
        assert_eq!(count_in(&[TABLE], b"/var/run/postgresql/.s.PGSQL.5432"), 0);
        assert_eq!(count_in(&[TABLE], b"/tmp/dbtm-1000-abcd1234/mysqld"), 0);
        assert_eq!(count_in(&[TABLE], b""), 0);
    }

    #[test]
    fn unix_clients_listening_socket_alone_is_no_client() {
        let listening = b"Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 53728 \
            /tmp/dbt-1000-abcd1234/.s.PGSQL.5432\n";
        assert_eq!(
            count_in(&[listening], b"/tmp/dbt-1000-abcd1234/.s.PGSQL.5432"),
            0
        );
    }

    #[test]
    fn unix_clients_lines_split_across_chunks_are_joined() {
        // Every split point, and one byte at a time.
        for split in 0..=TABLE.len() {
            let (a, b) = TABLE.split_at(split);
            assert_eq!(count_in(&[a, b], SOCKET), 2, "split at {split}");
        }
        let bytes: Vec<&[u8]> = TABLE.chunks(1).collect();
        assert_eq!(count_in(&bytes, SOCKET), 2);
        // A last line without its newline still counts.
        assert_eq!(count_in(&[&TABLE[..TABLE.len() - 1]], SOCKET), 2);
    }

    #[test]
    fn unix_clients_overlong_lines_are_skipped_not_misread() {
        let entry = |inode: &[u8]| {
            let mut line = b"0000000000000000: 00000003 00000000 00000000 0001 03 ".to_vec();
            line.extend_from_slice(inode);
            line.push(b' ');
            line.extend_from_slice(SOCKET);
            line
        };
        // A line whose first LINE_MAX bytes are a connection on our socket
        // (its inode padded), and one whose tail past LINE_MAX is; then a
        // real connection: only the latter counts.
        let mut cut = entry(b"1");
        let pad = LINE_MAX - cut.len();
        cut.splice(53..53, std::iter::repeat_n(b' ', pad));
        assert_eq!(cut.len(), LINE_MAX);
        assert_eq!(count_in(&[&cut], SOCKET), 1, "the padded line itself");
        let mut text = cut;
        text.extend_from_slice(b".old\n");
        text.extend(std::iter::repeat_n(b'x', LINE_MAX));
        text.extend_from_slice(&entry(b"2"));
        text.push(b'\n');
        text.extend_from_slice(&entry(b"3"));
        text.push(b'\n');
        assert_eq!(count_in(&[&text], SOCKET), 1);
        for size in [1, 7, 64, 300] {
            let chunks: Vec<&[u8]> = text.chunks(size).collect();
            assert_eq!(count_in(&chunks, SOCKET), 1, "chunks of {size}");
        }
    }

    #[test]
    fn unix_clients_seen_on_a_real_socket() {
        use std::os::unix::ffi::OsStrExt;
        use std::os::unix::net::{UnixListener, UnixStream};
        if !std::path::Path::new("/proc/net/unix").exists() {
            return;
        }
        let dir = std::env::temp_dir().join(format!("dbt-clients-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
        let listener = UnixListener::bind(&path).unwrap();
        assert!(!clients_connected(&c_path), "listening only");
        let client = UnixStream::connect(&path).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        assert!(clients_connected(&c_path), "one connection");
        drop(client);
        drop(accepted);
        assert!(!clients_connected(&c_path), "closed");
        drop(listener);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
