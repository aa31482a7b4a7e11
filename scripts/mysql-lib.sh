# Sourced by the scripts that talk to a MySQL/MariaDB server by URL.
# my_args URL [DATABASE]: the `mariadb` client's options for URL
# (mysql://user:pass@host:port/db or mysql://user@localhost/db?socket=PATH),
# one per line, with DATABASE instead of the URL's own if given.
my_args() {
    python3 - "$@" <<'PY'
import sys, urllib.parse as u
p = u.urlsplit(sys.argv[1])
q = dict(u.parse_qsl(p.query))
out = ["--user=" + u.unquote(p.username or "root")]
if p.password:
    out.append("--password=" + u.unquote(p.password))
if "socket" in q:
    out.append("--socket=" + q["socket"])
else:
    out.append("--host=" + (p.hostname or "localhost"))
    out.append("--port=" + str(p.port or 3306))
    out.append("--protocol=tcp")
db = sys.argv[2] if len(sys.argv) > 2 else p.path.lstrip("/")
if db:
    out.append("--database=" + db)
print("\n".join(out))
PY
}
# my URL [DATABASE] -- client arguments...: runs the client on URL.
my() {
    local url=$1 db="" args
    shift
    if [ "${1:-}" != "--" ]; then db=$1; shift; fi
    shift
    mapfile -t args < <(my_args "$url" $db)
    local client
    client=$(command -v mariadb || command -v mysql)
    "$client" "${args[@]}" "$@"
}
# my_dump URL DATABASE: schema and rows of DATABASE, without dates.
my_dump() {
    local all args=() a dump
    mapfile -t all < <(my_args "$1")
    for a in "${all[@]}"; do
        case $a in --database=*) ;; *) args+=("$a") ;; esac
    done
    dump=$(command -v mariadb-dump || command -v mysqldump)
    "$dump" "${args[@]}" --skip-dump-date --skip-comments --routines --triggers --events "$2"
}
