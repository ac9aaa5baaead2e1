# Shared by scripts/test and scripts/bench-*: make sure the loopback services
# a run needs are installed and running, or fail loudly. Source it; it defines
# functions only. Callers define nothing first.

log() { printf '\n==> %s\n' "$*" >&2; }
die() { printf '\nFATAL: %s\n' "$*" >&2; exit 1; }

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
  if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq || true; APT_UPDATED=1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || die "apt-get install $* failed"
}

wait_for() { # name, tries, command...
  local name=$1 tries=$2; shift 2
  for _ in $(seq "$tries"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "$name is not reachable after starting it"
}

ensure_redis() {
  command -v redis-server >/dev/null || { log "installing redis-server"; apt_install redis-server redis-tools; }
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    log "starting Redis on 127.0.0.1:6379"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --logfile /tmp/approvald-test-redis.log
    wait_for Redis 40 sh -c 'redis-cli -h 127.0.0.1 -p 6379 ping | grep -q PONG'
  fi
}

ensure_postgres() {
  if ! command -v pg_ctlcluster >/dev/null; then
    log "installing PostgreSQL"; apt_install postgresql postgresql-client
  fi
  if ! pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; then
    log "starting PostgreSQL"
    local ver; ver=$(ls /etc/postgresql | sort -V | tail -n1)
    [ -n "$ver" ] || die "no PostgreSQL cluster found under /etc/postgresql"
    local hba="/etc/postgresql/$ver/main/pg_hba.conf"
    if ! grep -q '^host all all 127.0.0.1/32 trust' "$hba"; then
      # Tests connect as postgres without a password on loopback only.
      sed -i '1i host all all 127.0.0.1/32 trust' "$hba"
    fi
    pg_ctlcluster --skip-systemctl-redirect "$ver" main start || true
    wait_for PostgreSQL 60 pg_isready -h 127.0.0.1 -p 5432 -q
  fi
  psql "postgres://postgres@127.0.0.1:5432/postgres" -qAtc 'select 1' >/dev/null 2>&1 \
    || die "PostgreSQL runs but postgres@127.0.0.1 cannot connect without a password (pg_hba.conf needs 'host all all 127.0.0.1/32 trust')"
}

# The cargo target directory (honours CARGO_TARGET_DIR and .cargo/config).
target_dir() {
  cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])'
}
