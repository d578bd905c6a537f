#!/usr/bin/env bash
# Several gateway instances behind nginx, sharing their state through one redis-server, all on loopback: what a
# team runs when one instance is not enough, small enough for a laptop or CI. Idempotent; installs redis-server and
# nginx from Debian's packages when missing.
#
#   scripts/cluster.sh start DIR [N]   # redis-server (appendonly), the mock provider, N instances (default 3), nginx
#   scripts/cluster.sh add DIR [PORT]  # one more instance, added to nginx (reloaded without dropping a connection)
#   scripts/cluster.sh stop DIR        # everything it started (SIGTERM, then SIGKILL after 30 s)
#
# DIR receives the configurations, the logs and cluster.env (URLs, ports, pids) for the tests and benchmarks.
# SWITCHYARD_BIN picks the binary (default: the debug build), MOCK_LATENCY_SCALE the mock's latency (default 0.2),
# GATEWAY_MODEL_OPTIONS more options of the gpt-4o-mini model (", budget: {rpm: 60}"), MOCK_ARGS the mock's (--rpm 60),
# SERVE_ARGS extra options for the instances started (for example --no-embeddings), GATEWAY_EXTRA a file appended
# to the instances' configuration (keys, limits, degradation: no providers or models).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${SWITCHYARD_BIN:-$ROOT/.build/debug/switchyard}

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
install_packages() {
    local missing=()
    command -v redis-server >/dev/null || [ -x /usr/bin/redis-server ] || missing+=(redis-server)
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
    [ ${#missing[@]} -eq 0 ] && return
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    # The packages start system services on 6379 and 80; nothing here uses them, so leave the machine as it was.
    for service in redis-server nginx; do
        $SUDO systemctl disable --now "$service" >/dev/null 2>&1 || $SUDO service "$service" stop >/dev/null 2>&1 || true
    done
}
nginx_bin() { command -v nginx || echo /usr/sbin/nginx; }
redis_bin() { command -v redis-server || echo /usr/bin/redis-server; }

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Waits for URL to answer 200 (at most $2 seconds).
wait_ready() {
    local url=$1 limit=$2 start=$SECONDS
    until python3 - "$url" <<'EOF' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=1) as r:
    sys.exit(0 if r.status == 200 else 1)
EOF
    do
        if (( SECONDS - start > limit )); then echo "cluster.sh: $url not ready after ${limit} s" >&2; return 1; fi
        sleep 0.1
    done
}

write_gateway_config() {
    local dir=$1
    cat >"$dir/gateway.yaml" <<EOF
# Written by scripts/cluster.sh: every instance reads this file.
drain_timeout_seconds: 30
providers:
  mock: {kind: openai-compatible, base_url: "http://127.0.0.1:$MOCK_PORT"}
models:
  gpt-4o-mini: {provider: mock${GATEWAY_MODEL_OPTIONS:-}}
  gpt-4o: {provider: mock}
  claude-haiku-4-5: {provider: mock}
  claude-sonnet-4-5: {provider: mock}
  claude-opus-4-1: {provider: mock}
state:
  backend: redis
  url: "redis://127.0.0.1:$REDIS_PORT/0"
  key_prefix: "switchyard:"
EOF
    # Keys, limits, degradation and cache settings for a scenario (loadtests/gateway/*.yaml).
    if [ -n "${GATEWAY_EXTRA:-}" ]; then cat "$GATEWAY_EXTRA" >>"$dir/gateway.yaml"; fi
}

write_nginx_config() {
    local dir=$1 servers="" port
    for port in $INSTANCE_PORTS; do servers+="        server 127.0.0.1:$port max_fails=1 fail_timeout=5s;"$'\n'; done
    local user=""; [ "$(id -u)" -eq 0 ] && user="user root root;"
    mkdir -p "$dir/nginx"
    cat >"$dir/nginx.conf.new" <<EOF
# Written by scripts/cluster.sh.
$user
worker_processes 2;
worker_rlimit_nofile 65536;
pid $dir/nginx.pid;
error_log $dir/nginx-error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    client_body_temp_path $dir/nginx/body;
    proxy_temp_path $dir/nginx/proxy;
    fastcgi_temp_path $dir/nginx/fastcgi;
    uwsgi_temp_path $dir/nginx/uwsgi;
    scgi_temp_path $dir/nginx/scgi;
    client_max_body_size 32m;
    upstream switchyard {
        # Streams hold a connection for seconds: the instance with the fewest is the least loaded.
        least_conn;
$servers
        keepalive 512;
        # Below the gateways' idle timeout (75 s), so nginx never sends a request on a connection they closed.
        keepalive_timeout 30s;
    }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://switchyard;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$remote_addr;
            # SSE: every event to the client as it comes, bodies to the gateway as they come.
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 3600s;
            proxy_send_timeout 3600s;
            # A refused connection (an instance that stopped listening) goes to the next instance; a request that
            # reached one is never sent twice (POST is not idempotent: nginx's default).
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 3;
        }
    }
}
EOF
    mv "$dir/nginx.conf.new" "$dir/nginx.conf"
}

write_env() {
    local dir=$1
    cat >"$dir/cluster.env.new" <<EOF
REDIS_PORT=$REDIS_PORT
MOCK_PORT=$MOCK_PORT
NGINX_PORT=$NGINX_PORT
INSTANCE_PORTS="$INSTANCE_PORTS"
INSTANCE_PIDS="$INSTANCE_PIDS"
REDIS_PID=$REDIS_PID
MOCK_PID=$MOCK_PID
EOF
    mv "$dir/cluster.env.new" "$dir/cluster.env"
}

start_instance() {
    local dir=$1 port=${2:-} index
    [ -n "$port" ] || port=$(free_port)
    index=$(( $(wc -w <<<"$INSTANCE_PORTS") + 1 ))
    # shellcheck disable=SC2086 # SERVE_ARGS: extra options, word by word (for example --no-embeddings)
    "$BIN" serve --config "$dir/gateway.yaml" --port "$port" --log-level "${LOG_LEVEL:-warning}" ${SERVE_ARGS:-} \
        >>"$dir/instance-$index.log" 2>&1 &
    INSTANCE_PIDS="${INSTANCE_PIDS:+$INSTANCE_PIDS }$!"
    INSTANCE_PORTS="${INSTANCE_PORTS:+$INSTANCE_PORTS }$port"
    NEW_PORT=$port
}

start() {
    local dir=$1 count=${2:-3} port
    install_packages
    [ -x "$BIN" ] || { echo "cluster.sh: no gateway binary at $BIN (swift build first)" >&2; exit 1; }
    mkdir -p "$dir/redis"
    dir=$(cd "$dir" && pwd)
    if [ -f "$dir/cluster.env" ]; then echo "cluster.sh: $dir already holds a cluster (stop it first)" >&2; exit 1; fi

    REDIS_PORT=$(free_port)
    "$(redis_bin)" --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$dir/redis" --appendonly yes --save "" \
        --daemonize no --logfile "$dir/redis.log" >/dev/null 2>&1 &
    REDIS_PID=$!
    MOCK_PORT=$(free_port)
    # shellcheck disable=SC2086 # MOCK_ARGS: extra options, word by word (for example --rpm 60)
    "$BIN" mock --port "$MOCK_PORT" --no-auth --latency-scale "${MOCK_LATENCY_SCALE:-0.2}" --log-level warning ${MOCK_ARGS:-} \
        >>"$dir/mock.log" 2>&1 &
    MOCK_PID=$!
    NGINX_PORT=$(free_port)
    INSTANCE_PORTS=""; INSTANCE_PIDS=""
    write_gateway_config "$dir"
    # Written now, so `stop` finds what was started even when a later step fails.
    write_env "$dir"
    wait_ready "http://127.0.0.1:$MOCK_PORT/healthz" 30 || wait_ready "http://127.0.0.1:$MOCK_PORT/v1/models" 5
    for _ in $(seq "$count"); do start_instance "$dir"; write_env "$dir"; done
    for port in $INSTANCE_PORTS; do wait_ready "http://127.0.0.1:$port/readyz" 120; done
    write_nginx_config "$dir"
    "$(nginx_bin)" -p "$dir" -c "$dir/nginx.conf" -g "daemon on;"
    wait_ready "http://127.0.0.1:$NGINX_PORT/readyz" 30
    echo "cluster.sh: nginx http://127.0.0.1:$NGINX_PORT → instances $INSTANCE_PORTS; redis 127.0.0.1:$REDIS_PORT" >&2
}

add() {
    local dir; dir=$(cd "$1" && pwd)
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    start_instance "$dir" "${2:-}"
    write_env "$dir"
    wait_ready "http://127.0.0.1:$NEW_PORT/readyz" 120
    write_nginx_config "$dir"
    "$(nginx_bin)" -p "$dir" -c "$dir/nginx.conf" -s reload 2>>"$dir/nginx-error.log"
    echo "$NEW_PORT"
}

stop() {
    local dir=$1 pid pids
    [ -f "$dir/cluster.env" ] || return 0
    # shellcheck disable=SC1091
    source "$dir/cluster.env"
    [ -f "$dir/nginx.pid" ] && "$(nginx_bin)" -p "$dir" -c "$dir/nginx.conf" -s quit 2>/dev/null || true
    pids="$INSTANCE_PIDS $MOCK_PID $REDIS_PID"
    for pid in $pids; do kill -TERM "$pid" 2>/dev/null || true; done
    for _ in $(seq 300); do
        local alive=""
        for pid in $pids; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ -z "$alive" ] && break
        sleep 0.1
    done
    for pid in $pids; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -f "$dir/cluster.env"
}

case "${1:-}" in
start) start "${2:?usage: $0 start DIR [N]}" "${3:-3}" ;;
add) add "${2:?usage: $0 add DIR [PORT]}" "${3:-}" ;;
stop) stop "${2:?usage: $0 stop DIR}" ;;
*) echo "usage: $0 start DIR [N] | add DIR [PORT] | stop DIR" >&2; exit 2 ;;
esac
