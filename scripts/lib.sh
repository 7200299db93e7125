# shellcheck shell=bash
# Shared set-up for scripts/run and scripts/test: source it, then call the ensure_*
# functions. Each one is idempotent: it checks first and changes only what is missing.
#
#   ensure_cargo            Rust toolchain present
#   ensure_packages         PostgreSQL, Mosquitto and their clients (apt-get, as root)
#   ensure_postgres         a PostgreSQL server answering on 127.0.0.1:5432
#   ensure_db_credentials   exports VIGIL_DATABASE__URL and VIGIL_TEST_DATABASE_URL
#   ensure_broker run|test  the project's own Mosquitto (deploy/mosquitto/vigil.conf):
#                           run exports VIGIL_MQTT__HOST/PORT and VIGIL_BROKER_SYNC__*,
#                           test exports VIGIL_TEST_MQTT_HOST/PORT
#   ensure_dev_certs        a development CA and server certificate in .vigil/tls/
#
# State lives in .vigil/ at the repository root (git-ignored): the database password
# (db-password), each broker's generated configuration, persistence, log, pid file and, for
# the run broker, its password and ACL files (mosquitto/, mosquitto-test/), the services'
# broker passwords (mqtt-*.password) and the development CA (tls/).
#
# Variables read: VIGIL_DATABASE__URL (use this database, create nothing),
# VIGIL_TEST_DATABASE_URL, VIGIL_BROKER_PORT (the broker's port instead of 1883/1884).

# shellcheck disable=SC2034  # variables below are read by the scripts that source this file
set -euo pipefail

VIGIL_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
VIGIL_STATE_DIR=$VIGIL_ROOT/.vigil
VIGIL_BROKER_DIR=$VIGIL_STATE_DIR/mosquitto
VIGIL_BROKER_TEMPLATE=$VIGIL_ROOT/deploy/mosquitto/vigil.conf
VIGIL_RUST_VERSION=1.89          # workspace rust-version in Cargo.toml

# The PostgreSQL server used when VIGIL_DATABASE__URL is not set.
VIGIL_PG_HOST=127.0.0.1
VIGIL_PG_PORT=5432

info() { printf 'vigil: %s\n' "$*" >&2; }
fail() {
  printf 'vigil: error: %s\n' "$*" >&2
  exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# A URL with its password replaced by ***, for printing.
redact_url() { printf '%s' "$1" | sed -E 's#^([a-z]+://[^:@/]+):[^@/]*@#\1:***@#'; }

# The URL with its database replaced; credentials, host and query parameters are kept.
url_with_database() {
  local url=$1 db=$2 base query='' prefix rest
  base=${url%%\?*}
  [ "$base" != "$url" ] && query="?${url#*\?}"
  prefix=${base%%://*}://
  rest=${base#*://}
  printf '%s%s/%s%s' "$prefix" "${rest%%/*}" "$db" "$query"
}

# True when something accepts TCP connections on 127.0.0.1:$1.
port_in_use() { timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null; }

# ------------------------------------------------------------------------------ rust ---

ensure_cargo() {
  if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
    PATH=$HOME/.cargo/bin:$PATH
  fi
  command -v cargo >/dev/null 2>&1 ||
    fail "cargo not found. Vigil is written in Rust: install Rust $VIGIL_RUST_VERSION or newer (rustup is the usual way), make sure cargo is on PATH, and run this again."
  local version
  version=$(rustc --version 2>/dev/null | awk '{print $2}') || version=
  if [ -n "$version" ] &&
    [ "$(printf '%s\n%s\n' "$VIGIL_RUST_VERSION" "${version%%-*}" | sort -V | head -n1)" != "$VIGIL_RUST_VERSION" ]; then
    fail "Rust $version is too old: Vigil needs $VIGIL_RUST_VERSION or newer (rustup update)."
  fi
}

# -------------------------------------------------------------------------- packages ---

_vigil_apt_updated=

apt_install() {
  is_root ||
    fail "missing packages: $*. Install them with: sudo apt-get update && sudo apt-get install -y $* (or run this script as root)."
  command -v apt-get >/dev/null 2>&1 ||
    fail "missing packages: $*, and apt-get is not available: install them with your system's package manager."
  mkdir -p "$VIGIL_STATE_DIR"
  local log=$VIGIL_STATE_DIR/apt.log
  if [ -z "$_vigil_apt_updated" ]; then
    info "apt-get update"
    apt-get update >"$log" 2>&1 || {
      tail -n 20 "$log" >&2
      fail "apt-get update failed (full output in $log)"
    }
    _vigil_apt_updated=1
  fi
  info "installing $* (apt-get install; output in $log)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y "$@" >>"$log" 2>&1 || {
    tail -n 20 "$log" >&2
    fail "apt-get install $* failed (full output in $log)"
  }
}

have() { command -v "$1" >/dev/null 2>&1; }

mosquitto_bin() {
  if have mosquitto; then
    command -v mosquitto
  elif [ -x /usr/sbin/mosquitto ]; then
    echo /usr/sbin/mosquitto
  else
    return 1
  fi
}

pg_server_installed() {
  have pg_ctlcluster && have pg_lsclusters && compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null
}

ensure_packages() {
  local missing=()
  if [ -n "${VIGIL_DATABASE__URL:-}" ]; then
    # The user's own database server: only the client is needed.
    { have psql && have pg_isready; } || missing+=(postgresql-client)
  else
    { have psql && have pg_isready && pg_server_installed; } || missing+=(postgresql)
  fi
  mosquitto_bin >/dev/null || missing+=(mosquitto)
  { have mosquitto_pub && have mosquitto_sub; } || missing+=(mosquitto-clients)
  have curl || missing+=(curl)
  have openssl || missing+=(openssl)
  if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# ------------------------------------------------------------------------ postgresql ---

# pg_isready quietly; arguments say which server.
pg_ready() { pg_isready -q -t 3 "$@" >/dev/null 2>&1; }

wait_for_postgres() {
  local what=$1
  shift
  local deadline=$((SECONDS + 60))
  until pg_ready "$@"; do
    [ $SECONDS -lt $deadline ] || fail "PostgreSQL ($what) did not become ready within 60 s."
    sleep 1
  done
}

ensure_postgres() {
  if [ -n "${VIGIL_DATABASE__URL:-}" ]; then
    info "PostgreSQL: using VIGIL_DATABASE__URL ($(redact_url "$VIGIL_DATABASE__URL"))"
    pg_ready -d "$VIGIL_DATABASE__URL" ||
      fail "the server in VIGIL_DATABASE__URL ($(redact_url "$VIGIL_DATABASE__URL")) does not answer; start it, or unset VIGIL_DATABASE__URL to use a local one."
    return 0
  fi
  if pg_ready -h "$VIGIL_PG_HOST" -p "$VIGIL_PG_PORT"; then
    info "PostgreSQL: server on $VIGIL_PG_HOST:$VIGIL_PG_PORT is running"
    return 0
  fi

  # Nothing answers yet: start (or wait for) the Debian cluster that uses that port.
  local version='' name='' status='' line
  line=$(pg_lsclusters -h 2>/dev/null | awk -v port="$VIGIL_PG_PORT" '$3 == port { print $1, $2, $4; exit }') || true
  if [ -n "$line" ]; then
    read -r version name status <<<"$line"
  else
    if [ -n "$(pg_lsclusters -h 2>/dev/null)" ]; then
      pg_lsclusters >&2 || true
      fail "no PostgreSQL cluster uses port $VIGIL_PG_PORT. Start a server on $VIGIL_PG_HOST:$VIGIL_PG_PORT, or set VIGIL_DATABASE__URL to the one to use."
    fi
    version=$(ls /usr/lib/postgresql | sort -V | tail -n1)
    name=main
    is_root || fail "PostgreSQL $version is installed but has no cluster; create one as root: pg_createcluster --start $version main"
    info "PostgreSQL: creating cluster $version/$name"
    pg_createcluster -p "$VIGIL_PG_PORT" "$version" "$name" >&2
    status=down
  fi

  if [ "$status" != online ]; then
    info "PostgreSQL: starting cluster $version/$name"
    local log=$VIGIL_STATE_DIR/pg_ctlcluster.log
    mkdir -p "$VIGIL_STATE_DIR"
    # With systemd, pg_ctlcluster hands over to the postgresql@ unit; without it
    # (containers, chroots) it starts the server itself, as the second form always does.
    if ! pg_ctlcluster "$version" "$name" start </dev/null >"$log" 2>&1 &&
      ! pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start </dev/null >>"$log" 2>&1 &&
      ! pg_ready -h "$VIGIL_PG_HOST" -p "$VIGIL_PG_PORT"; then
      cat "$log" >&2
      fail "could not start PostgreSQL cluster $version/$name (see /var/log/postgresql/postgresql-$version-$name.log)$(is_root || echo '; start it as root or as its owner')."
    fi
  fi
  wait_for_postgres "$VIGIL_PG_HOST:$VIGIL_PG_PORT" -h "$VIGIL_PG_HOST" -p "$VIGIL_PG_PORT"
  info "PostgreSQL: server on $VIGIL_PG_HOST:$VIGIL_PG_PORT is running"
}

# ----------------------------------------------------------------------- credentials ---

# Set when the database credentials come from .vigil/db-password (scripts/run prints
# commands that read the file rather than the password itself).
VIGIL_DB_PASSWORD_FILE=
# Set when VIGIL_DATABASE__URL was chosen here rather than given by the user.
VIGIL_DB_URL_CHOSEN=

pg_connects() { PGCONNECT_TIMEOUT=5 psql -X -w -q -d "$1" -c 'SELECT 1' >/dev/null 2>&1; }

# True when the role in URL $1 logs in and has what Vigil needs: CREATEDB, CREATEROLE and
# pg_read_all_settings.
vigil_role_ready() {
  local ok
  ok=$(PGCONNECT_TIMEOUT=5 psql -X -w -q -At -d "$1" -c "SELECT rolcreatedb AND rolcreaterole AND pg_has_role(current_user, 'pg_read_all_settings', 'USAGE') FROM pg_roles WHERE rolname = current_user" 2>/dev/null) || return 1
  [ "$ok" = t ]
}

ensure_db_credentials() {
  if [ -n "${VIGIL_DATABASE__URL:-}" ]; then
    : # the user's choice, used as is
  elif pg_connects "postgres://postgres@$VIGIL_PG_HOST:$VIGIL_PG_PORT/postgres"; then
    # A development server that trusts local TCP connections.
    export VIGIL_DATABASE__URL="postgres://postgres@$VIGIL_PG_HOST:$VIGIL_PG_PORT/vigil"
    VIGIL_DB_URL_CHOSEN=1
  else
    # Debian's defaults: peer authentication on the socket, passwords on TCP. Vigil gets
    # its own role, which may create databases (vigil migrate, the end-to-end tests).
    local pwfile=$VIGIL_STATE_DIR/db-password password
    mkdir -p "$VIGIL_STATE_DIR"
    if [ ! -s "$pwfile" ]; then
      password=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')
      (umask 077 && printf '%s\n' "$password" >"$pwfile.tmp") && mv "$pwfile.tmp" "$pwfile"
      info "database: generated a password for role vigil in $pwfile"
    fi
    chmod 600 "$pwfile"
    password=$(tr -d '[:space:]' <"$pwfile")
    [[ $password =~ ^[A-Za-z0-9]+$ ]] || fail "$pwfile must hold letters and digits only; delete it to generate a new password."
    local url="postgres://vigil:$password@$VIGIL_PG_HOST:$VIGIL_PG_PORT/postgres"
    if ! vigil_role_ready "$url"; then
      is_root ||
        fail "cannot connect to PostgreSQL on $VIGIL_PG_HOST:$VIGIL_PG_PORT as postgres (no password), nor as vigil with the privileges it needs, and setting up role vigil needs root. Set VIGIL_DATABASE__URL to a role that may create databases, or run this as root."
      info "database: creating or updating role vigil (LOGIN CREATEDB CREATEROLE, member of pg_read_all_settings)"
      # Over the local socket as the postgres superuser (peer authentication). The
      # password goes through stdin, not the command line. pg_read_all_settings: the
      # migrations read shared_preload_libraries to tell whether TimescaleDB is loaded,
      # which PostgreSQL shows only to superusers and members of that role. CREATEROLE: the
      # migrations create the dashboards' roles vigil_grafana and vigil_team_reader, and
      # vigil admin team grafana-role creates care teams' roles.
      (cd / && runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -p "$VIGIL_PG_PORT" -d postgres) >/dev/null 2>"$VIGIL_STATE_DIR/role.err" <<SQL || {
\\set password '$password'
SELECT format('CREATE ROLE vigil LOGIN CREATEDB CREATEROLE PASSWORD %L', :'password')
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'vigil')
\\gexec
ALTER ROLE vigil WITH LOGIN CREATEDB CREATEROLE PASSWORD :'password';
GRANT pg_read_all_settings TO vigil;
SQL
        cat "$VIGIL_STATE_DIR/role.err" >&2
        fail "could not set up role vigil as the postgres superuser over the local socket (/var/run/postgresql, port $VIGIL_PG_PORT)."
      }
      vigil_role_ready "$url" ||
        fail "role vigil exists but cannot log in on $VIGIL_PG_HOST:$VIGIL_PG_PORT with its password; check pg_hba.conf allows password (scram-sha-256 or md5) logins from 127.0.0.1."
    fi
    export VIGIL_DATABASE__URL="postgres://vigil:$password@$VIGIL_PG_HOST:$VIGIL_PG_PORT/vigil"
    VIGIL_DB_PASSWORD_FILE=$pwfile
    VIGIL_DB_URL_CHOSEN=1
  fi
  if [ -z "${VIGIL_TEST_DATABASE_URL:-}" ]; then
    export VIGIL_TEST_DATABASE_URL
    VIGIL_TEST_DATABASE_URL=$(url_with_database "$VIGIL_DATABASE__URL" postgres)
  fi
  info "database: $(redact_url "$VIGIL_DATABASE__URL")"
}

# ---------------------------------------------------------------------------- broker ---

# Two brokers from the one template, deploy/mosquitto/vigil.conf, each with its own state
# directory and port:
#   run   .vigil/mosquitto/       as shipped: no anonymous clients, password and ACL files
#                                  kept by `vigil broker-sync`, plain TCP on loopback and a
#                                  TLS listener (development CA in .vigil/tls/)
#   test  .vigil/mosquitto-test/  for the end-to-end tests: loopback only, anonymous
#                                  clients allowed, no TLS listener. Tests of the broker's
#                                  own authentication start brokers of their own from the
#                                  "run" form of the template.
VIGIL_BROKER_DIR=
VIGIL_BROKER_CONF=
VIGIL_BROKER_PIDFILE=
VIGIL_BROKER_LOG=
VIGIL_BROKER_PORTFILE=
VIGIL_BROKER_PORT_USED=
VIGIL_BROKER_TLS_PORT_USED=
VIGIL_TLS_DIR=$VIGIL_STATE_DIR/tls

broker_paths() {
  case $1 in
    run) VIGIL_BROKER_DIR=$VIGIL_STATE_DIR/mosquitto ;;
    test) VIGIL_BROKER_DIR=$VIGIL_STATE_DIR/mosquitto-test ;;
    *) fail "broker_paths: unknown broker $1 (run or test)" ;;
  esac
  VIGIL_BROKER_CONF=$VIGIL_BROKER_DIR/mosquitto.conf
  VIGIL_BROKER_PIDFILE=$VIGIL_BROKER_DIR/mosquitto.pid
  VIGIL_BROKER_LOG=$VIGIL_BROKER_DIR/mosquitto.log
  VIGIL_BROKER_PORTFILE=$VIGIL_BROKER_DIR/port
}

# The pid of the project's broker when it is running: the pid file's process, if it is a
# mosquitto started with our generated configuration.
broker_pid() {
  local pid
  [ -s "$VIGIL_BROKER_PIDFILE" ] || return 1
  pid=$(tr -d '[:space:]' <"$VIGIL_BROKER_PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$VIGIL_BROKER_CONF" || return 1
  echo "$pid"
}

# Writes a runtime configuration from deploy/mosquitto/vigil.conf with its machine-specific
# lines (marked "(rewritten)" there) pointed at this machine.
#   generate_broker_conf MODE PORT TLS_PORT STATE_DIR TLS_DIR OUT
# MODE run keeps the template's security settings; MODE test drops the TLS listener and the
# password and ACL files and allows anonymous clients (loopback only).
generate_broker_conf() {
  local mode=$1 port=$2 tls_port=$3 dir=$4 tls_dir=$5 out=$6 run_as=''
  # As root, keep running as root: the mosquitto account cannot reach a checkout under
  # /root. As any other user the `user` line is ignored by Mosquitto.
  is_root && run_as=root
  {
    echo "# Generated from deploy/mosquitto/vigil.conf by scripts/lib.sh each time the broker"
    echo "# starts; edit that file instead. Lines marked (rewritten) there point here."
    echo
    awk -v mode="$mode" -v port="$port" -v tls_port="$tls_port" -v dir="$dir" \
      -v tls_dir="$tls_dir" -v run_as="$run_as" '
      $1 == "listener" {
        listeners++
        if (listeners == 1) { $2 = port; seen["listener"]++ }
        else { in_tls = 1; $2 = tls_port; seen["tls listener"]++ }
      }
      # The TLS listener block ends at the first blank line after its settings.
      in_tls && NF == 0            { in_tls = 0 }
      mode == "test" && in_tls { next }
      mode == "test" && ($1 == "password_file" || $1 == "acl_file") { seen[$1]++; next }
      mode == "test" && $1 == "allow_anonymous" { $0 = "allow_anonymous true"; seen[$1]++ }
      mode == "run" && $1 == "allow_anonymous" { seen[$1]++ }
      $1 == "password_file"        { $0 = "password_file " dir "/passwords"; seen[$1]++ }
      $1 == "acl_file"             { $0 = "acl_file " dir "/acl"; seen[$1]++ }
      $1 == "cafile"               { $0 = "cafile " tls_dir "/ca.pem"; seen[$1]++ }
      $1 == "certfile"             { $0 = "certfile " tls_dir "/server.pem"; seen[$1]++ }
      $1 == "keyfile"              { $0 = "keyfile " tls_dir "/server.key"; seen[$1]++ }
      $1 == "persistence_location" { $0 = "persistence_location " dir "/"; seen[$1]++ }
      $1 == "log_dest" && $2 == "file" { $0 = "log_dest file " dir "/mosquitto.log"; seen["log_dest file"]++ }
      $1 == "pid_file"             { $0 = "pid_file " dir "/mosquitto.pid"; seen[$1]++ }
      $1 == "user"                 { if (run_as != "") $0 = "user " run_as; seen[$1]++ }
      { print }
      END {
        n = split("listener persistence_location pid_file user allow_anonymous password_file acl_file", keys, " ")
        keys[++n] = "log_dest file"
        if (mode == "run") {
          keys[++n] = "tls listener"; keys[++n] = "cafile"; keys[++n] = "certfile"; keys[++n] = "keyfile"
        }
        for (i = 1; i <= n; i++) if (seen[keys[i]] != 1) {
          printf "deploy/mosquitto/vigil.conf: expected exactly one \"%s\" line, found %d\n", keys[i], seen[keys[i]] > "/dev/stderr"
          bad = 1
        }
        exit bad
      }' "$VIGIL_BROKER_TEMPLATE"
  } >"$out"
}

# A development certificate authority and a server certificate for localhost and
# 127.0.0.1, in .vigil/tls/ (ca.pem, server.pem, server.key), made once with openssl.
# Clients trust ca.pem: mosquitto_pub --cafile .vigil/tls/ca.pem -p <TLS port>.
ensure_dev_certs() {
  local dir=$VIGIL_TLS_DIR
  if [ -s "$dir/ca.pem" ] && [ -s "$dir/server.pem" ] && [ -s "$dir/server.key" ] &&
    openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" >/dev/null 2>&1 &&
    openssl x509 -checkend 86400 -noout -in "$dir/server.pem" >/dev/null 2>&1; then
    return 0
  fi
  info "TLS: creating a development CA and a certificate for localhost/127.0.0.1 in $dir"
  mkdir -p "$dir"
  (
    umask 077
    cd "$dir"
    openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj "/CN=Vigil development CA" \
      -keyout ca.key -out ca.pem -addext "basicConstraints=critical,CA:TRUE" \
      -addext "keyUsage=critical,keyCertSign,cRLSign" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key \
      -out server.csr >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
      -extfile server.ext -out server.pem >/dev/null 2>&1
    rm -f server.csr server.ext ca.srl
    chmod 644 ca.pem server.pem
  ) || fail "could not create development certificates in $dir (openssl)"
}

stop_broker() {
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  info "broker: pid $pid did not stop within 10 s; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

# True when an MQTT broker answers on 127.0.0.1:$1; refusing an anonymous client counts.
broker_answers() {
  local out
  out=$(mosquitto_sub -V 5 -h 127.0.0.1 -p "$1" -t '$SYS/broker/version' -C 1 -W 3 2>&1) && return 0
  case $out in *"Not authorized"*) return 0 ;; esac
  return 1
}

# ensure_broker run|test: see "broker" above.
ensure_broker() {
  local mode=$1
  broker_paths "$mode"
  case "$VIGIL_BROKER_DIR" in
    *[[:space:]]*) fail "the checkout path ($VIGIL_ROOT) contains whitespace, which Mosquitto's configuration cannot express; move the checkout." ;;
  esac
  if [ -n "${VIGIL_BROKER_PORT:-}" ]; then
    [[ $VIGIL_BROKER_PORT =~ ^[0-9]+$ ]] && [ "$VIGIL_BROKER_PORT" -ge 1 ] && [ "$VIGIL_BROKER_PORT" -le 65535 ] ||
      fail "VIGIL_BROKER_PORT=$VIGIL_BROKER_PORT is not a port number."
  fi
  local mosquitto
  mosquitto=$(mosquitto_bin) || fail "mosquitto is not installed (ensure_packages installs it)."
  mkdir -p "$VIGIL_BROKER_DIR"
  # One script at a time decides whether to start the broker.
  local lock_fd
  exec {lock_fd}>"$VIGIL_BROKER_DIR/lock"
  flock -w 60 "$lock_fd" || fail "another scripts/run or scripts/test is starting the broker (lock $VIGIL_BROKER_DIR/lock held for 60 s)."

  if [ "$mode" = run ]; then
    ensure_dev_certs
    # The broker refuses to start without its password and ACL files; until
    # `vigil broker-sync` writes them they admit nobody.
    local f
    for f in passwords acl; do
      [ -e "$VIGIL_BROKER_DIR/$f" ] || (umask 027 && : >"$VIGIL_BROKER_DIR/$f")
    done
  fi

  local pid='' running_port='' port tls_port tmp=$VIGIL_BROKER_DIR/mosquitto.conf.new
  if pid=$(broker_pid); then
    running_port=$(cat "$VIGIL_BROKER_PORTFILE" 2>/dev/null || true)
  else
    pid=''
  fi

  # The port: VIGIL_BROKER_PORT, else the running broker's, else 1883 unless another
  # program (such as the system's own Mosquitto) has it, else 1884, and so on up to 1899
  # (another checkout of Vigil on this machine runs a broker of its own).
  if [ -n "${VIGIL_BROKER_PORT:-}" ]; then
    port=$VIGIL_BROKER_PORT
    if [ "$port" != "$running_port" ] && port_in_use "$port"; then
      fail "VIGIL_BROKER_PORT=$port: another program already listens on 127.0.0.1:$port; choose a free port."
    fi
  elif [[ $running_port =~ ^[0-9]+$ ]]; then
    port=$running_port
  else
    port=1883
    while port_in_use "$port"; do
      port=$((port + 1))
      [ "$port" -le 1899 ] ||
        fail "ports 1883 to 1899 on 127.0.0.1 are all taken by other programs; set VIGIL_BROKER_PORT to a free port."
    done
    if [ "$port" = 1884 ]; then
      info "broker: 127.0.0.1:1883 is taken by another program (left alone); the project's broker uses 1884"
    elif [ "$port" != 1883 ]; then
      info "broker: 127.0.0.1:1883 to $((port - 1)) are taken by other programs (left alone); the project's broker uses $port"
    fi
  fi

  # The TLS listener (run only): 8883 beside 1883, 8884 beside 1884, and so on.
  tls_port=$((port + 7000))
  if [ "$mode" = run ] && [ "$port" != "$running_port" ] && port_in_use "$tls_port"; then
    fail "the broker's TLS port 127.0.0.1:$tls_port (its MQTT port + 7000) is taken by another program; set VIGIL_BROKER_PORT to move both."
  fi

  if [ -n "$pid" ]; then
    if [ "$port" = "$running_port" ] &&
      generate_broker_conf "$mode" "$port" "$tls_port" "$VIGIL_BROKER_DIR" "$VIGIL_TLS_DIR" "$tmp" &&
      cmp -s "$tmp" "$VIGIL_BROKER_CONF" && broker_answers "$port"; then
      rm -f "$tmp"
      info "broker: reusing the project's Mosquitto (pid $pid) on 127.0.0.1:$port"
    else
      rm -f "$tmp"
      info "broker: restarting the project's Mosquitto (pid $pid): its port or configuration changed"
      stop_broker "$pid"
      pid=''
    fi
  fi

  if [ -z "$pid" ]; then
    generate_broker_conf "$mode" "$port" "$tls_port" "$VIGIL_BROKER_DIR" "$VIGIL_TLS_DIR" "$tmp" || fail "could not generate the broker configuration from $VIGIL_BROKER_TEMPLATE"
    mv "$tmp" "$VIGIL_BROKER_CONF"
    echo "$port" >"$VIGIL_BROKER_PORTFILE"
    rm -f "$VIGIL_BROKER_PIDFILE"
    info "broker: starting Mosquitto on 127.0.0.1:$port (state and log in $VIGIL_BROKER_DIR)"
    # Daemonised, so it outlives this script; it must not keep the lock or this script's
    # output open (a CI runner waits for its output to close).
    "$mosquitto" -c "$VIGIL_BROKER_CONF" -d </dev/null >"$VIGIL_BROKER_DIR/start.err" 2>&1 {lock_fd}>&- || {
      cat "$VIGIL_BROKER_DIR/start.err" >&2
      fail "mosquitto refused its configuration ($VIGIL_BROKER_CONF); see the message above."
    }
    local deadline=$((SECONDS + 20))
    until broker_pid >/dev/null && broker_answers "$port"; do
      if [ $SECONDS -ge $deadline ] || { [ -s "$VIGIL_BROKER_PIDFILE" ] && ! broker_pid >/dev/null; }; then
        tail -n 15 "$VIGIL_BROKER_LOG" >&2 2>/dev/null || true
        fail "the project's Mosquitto did not come up on 127.0.0.1:$port (log: $VIGIL_BROKER_LOG)."
      fi
      sleep 0.3
    done
    info "broker: Mosquitto (pid $(broker_pid)) is answering on 127.0.0.1:$port"
  fi

  exec {lock_fd}>&-
  VIGIL_BROKER_PORT_USED=$port
  if [ "$mode" = run ]; then
    VIGIL_BROKER_TLS_PORT_USED=$tls_port
    export VIGIL_MQTT__HOST=127.0.0.1 VIGIL_MQTT__PORT=$port
    export VIGIL_BROKER_SYNC__PASSWORD_FILE=$VIGIL_BROKER_DIR/passwords
    export VIGIL_BROKER_SYNC__ACL_FILE=$VIGIL_BROKER_DIR/acl
    export VIGIL_BROKER_SYNC__PID_FILE=$VIGIL_BROKER_PIDFILE
  else
    export VIGIL_TEST_MQTT_HOST=127.0.0.1 VIGIL_TEST_MQTT_PORT=$port
  fi
}

# The services' broker accounts (vigil-ingest, vigil-alerts): passwords generated once
# into .vigil/mqtt-<service>.password and applied to the database on every run, then the
# broker's files synced once. Exports the services' MQTT credentials. $1: the vigil binary.
ensure_broker_accounts() {
  local vigil=$1 service pwfile
  for service in ingest alerts; do
    pwfile=$VIGIL_STATE_DIR/mqtt-$service.password
    if [ ! -s "$pwfile" ]; then
      (umask 077 && od -An -tx1 -N24 /dev/urandom | tr -d ' \n' >"$pwfile.tmp") && mv "$pwfile.tmp" "$pwfile"
    fi
    "$vigil" admin broker-account put --username "vigil-$service" --role "$service" \
      --password-file "$pwfile" >/dev/null ||
      fail "could not register the broker account vigil-$service"
  done
  "$vigil" broker-sync --once >&2 || fail "could not write the broker's password and ACL files"
  export VIGIL_MQTT__USERNAME=vigil-ingest VIGIL_ALERTS__MQTT_USERNAME=vigil-alerts
  VIGIL_MQTT__PASSWORD=$(cat "$VIGIL_STATE_DIR/mqtt-ingest.password")
  VIGIL_ALERTS__MQTT_PASSWORD=$(cat "$VIGIL_STATE_DIR/mqtt-alerts.password")
  export VIGIL_MQTT__PASSWORD VIGIL_ALERTS__MQTT_PASSWORD
}

# ------------------------------------------------------------------------ timescaledb ---

# When the TimescaleDB extension is installed for the local PostgreSQL but the server does
# not preload it, the TimescaleDB tests get a scratch server of their own that does
# (owned by postgres, under its home, on 127.0.0.1:55433, trust authentication). Exports
# VIGIL_TEST_TIMESCALE_URL; leaves a value the user set alone; does nothing when the
# extension is not installed (Debian does not package it).
ensure_timescale_test_server() {
  [ -z "${VIGIL_TEST_TIMESCALE_URL:-}" ] || return 0
  local version bin share port=55433
  version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1)
  [ -n "$version" ] || return 0
  bin=/usr/lib/postgresql/$version/bin
  share=/usr/share/postgresql/$version
  [ -f "$share/extension/timescaledb.control" ] || return 0
  is_root || return 0
  local data=/var/lib/postgresql/vigil-timescale-test
  if ! pg_connects "postgres://postgres@127.0.0.1:$port/postgres"; then
    if [ ! -s "$data/PG_VERSION" ]; then
      info "TimescaleDB is installed: creating a scratch server for its tests in $data"
      runuser -u postgres -- "$bin/initdb" -D "$data" -A trust -U postgres >/dev/null ||
        fail "initdb of the TimescaleDB test server failed"
      cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
shared_preload_libraries = 'timescaledb'
timescaledb.telemetry_level = off
CONF
    fi
    runuser -u postgres -- "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w start >/dev/null ||
      fail "the TimescaleDB test server did not start (log: $data/server.log)"
  fi
  export VIGIL_TEST_TIMESCALE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

# The toolchain, packages, PostgreSQL and its credentials; scripts then start the broker
# they need (ensure_broker run or test).
ensure_environment() {
  ensure_cargo
  ensure_packages
  ensure_postgres
  ensure_db_credentials
}
