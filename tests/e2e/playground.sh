#!/usr/bin/env bash
# The bot and the Microsoft 365 Agents Playground together, in a loopback-only network namespace.
#
#   tests/e2e/playground.sh open              for a person (make playground): the Playground's
#                                             page on http://127.0.0.1:$PLAYGROUND_PORT until Ctrl-C
#   tests/e2e/playground.sh drive STEPS OUT   inside `unshare -n` (tests/test_playground_e2e.py):
#                                             headless Chromium types the STEPS, artifacts in OUT
#
# The Playground reaches for outside addresses at start-up even with --disable-telemetry, so it
# only ever runs inside a network namespace with nothing but `lo`. `open` puts a byte-for-byte
# bridge through a unix socket between the machine's 127.0.0.1 and the Playground's page.
#
# Inside the namespace (fixed ports, nothing else can hold them there):
#   bot         http://127.0.0.1:3978/api/messages   local development mode (no MicrosoftAppId)
#   Playground  http://127.0.0.1:56150/              web page, and its Bot Connector emulation
#               serviceUrl http://127.0.0.1:56150/_connector, the only trusted service URL
#   user        Alex Wilber, aadObjectId 00000000-0000-0000-0000-0000000000020 (Playground default)
set -euo pipefail

E2E=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$E2E/../.." && pwd)
PY=${PLAYGROUND_PYTHON:-$ROOT/.venv/bin/python}
NODE=${NODE:-node}
PLAYGROUND_CLI=$E2E/node_modules/@microsoft/m365agentsplayground/cli.js
BOT_PORT=3978
PLAYGROUND_PORT_INSIDE=56150
SERVICE_URL=http://127.0.0.1:$PLAYGROUND_PORT_INSIDE/_connector
# The Playground's default signed-in user; anyone else typing in the Playground is not an admin.
PLAYGROUND_USER=00000000-0000-0000-0000-0000000000020
START_TIMEOUT=${PLAYGROUND_START_TIMEOUT:-40}

say() { printf '[playground %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { say "$*"; exit 1; }

pids=()
stop_all() {
  # Children in reverse order of start; TERM first, KILL after a bounded wait.
  local pid i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; done
  for _ in $(seq 1 50); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

# Polls URL until it answers 200, for at most START_TIMEOUT seconds; PID must stay alive.
wait_http() {
  local url=$1 pid=$2 what=$3 log=$4
  "$PY" - "$url" "$pid" "$START_TIMEOUT" <<'EOF' || { tail -n 40 "$log" >&2 || true; die "$what did not come up ($url); its log is above"; }
import os, sys, time, urllib.request
url, pid, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
deadline = time.monotonic() + limit
while time.monotonic() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(1)
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            if response.status == 200:
                sys.exit(0)
    except OSError:
        pass
    time.sleep(0.1)
sys.exit(1)
EOF
}

# Refuses to go on unless `lo` is this namespace's only interface, then brings it up (the
# ioctl that `ip link set lo up` makes, so iproute2 is not needed).
require_loopback_only() {
  "$PY" - <<'EOF' || die "refusing to start outside a loopback-only network namespace: run me inside 'unshare -n'"
import fcntl, socket, struct, sys
names = sorted(name for _, name in socket.if_nameindex())
if names != ["lo"]:
    sys.exit(f"network interfaces here: {', '.join(names)}")
SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, struct.pack("16sH", b"lo", 0)))[1]
    fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP))
EOF
}

# Seeds the demo catalog, starts the bot and the Playground; WORK holds logs.
start_stack() {
  local work=$1
  require_loopback_only
  case "${DATABASE_URL:-}" in
    sqlite://*) ;;
    *) die "DATABASE_URL must be a sqlite:// URL here (a server outside this namespace is unreachable)" ;;
  esac
  [ -f "$PLAYGROUND_CLI" ] || die "Playground not installed: run 'make node-deps' (npm ci in tests/e2e)"
  # Local development mode whatever a .env says: the Playground sends no Bot Framework token.
  export MicrosoftAppId='' MicrosoftAppPassword='' MicrosoftAppTenantId=''
  export HOST=127.0.0.1 PORT=$BOT_PORT PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
  export FUSION_DEV_ADMINS=${FUSION_DEV_ADMINS:-$PLAYGROUND_USER}
  export FUSION_TRUSTED_SERVICE_URLS=$SERVICE_URL/

  say "seeding the demo catalog"
  "$PY" -m bot.demo >"$work/demo.log" 2>&1 || { cat "$work/demo.log" >&2; die "demo seed failed"; }

  say "starting the bot (in the namespace: http://127.0.0.1:$BOT_PORT/api/messages)"
  "$PY" "$ROOT/app.py" >"$work/bot.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$BOT_PORT/healthz" "${pids[-1]}" "the bot" "$work/bot.log"

  say "starting the Agents Playground (in the namespace: http://127.0.0.1:$PLAYGROUND_PORT_INSIDE)"
  (cd "$work" && TEAMSAPPTESTER_BROWSER=none M365_AGENTS_PLAYGROUND_LOGFILE="$work/playground.log" \
    exec "$NODE" "$PLAYGROUND_CLI" start --disable-telemetry --channel-id msteams \
      --app-endpoint "http://127.0.0.1:$BOT_PORT/api/messages" \
      --port "$PLAYGROUND_PORT_INSIDE" --service-url "$SERVICE_URL" \
      >"$work/playground.out" 2>&1) &
  pids+=($!)
  wait_http "http://127.0.0.1:$PLAYGROUND_PORT_INSIDE/" "${pids[-1]}" "the Playground" "$work/playground.out"
}

unshare_args() {
  # Root makes the namespaces directly; anyone else through a user namespace. --pid with
  # --kill-child: when the script ends, however it ends, everything it started goes with it.
  if [ "$(id -u)" = 0 ]; then echo "--net --pid --fork --kill-child"
  else echo "--user --map-root-user --net --pid --fork --kill-child"; fi
}

cmd=${1:-}
case "$cmd" in
  drive)
    steps=${2:?usage: playground.sh drive STEPS.json OUTDIR}
    out=${3:?usage: playground.sh drive STEPS.json OUTDIR}
    mkdir -p "$out"
    # The caller may name the work folder, so nothing is left behind in /tmp if we are killed.
    work=${PLAYGROUND_WORKDIR:-$(mktemp -d)}
    mkdir -p "$work"
    trap 'stop_all; cp "$work"/*.log "$work"/*.out "$out"/ 2>/dev/null || true' EXIT
    export DATABASE_URL=${DATABASE_URL:-sqlite://$work/fusion.sqlite3}
    cd "$work"  # no .env of the working tree reaches the bot under test
    start_stack "$work"
    say "driving the Playground in headless Chromium"
    (cd "$E2E" && timeout "${DRIVE_TIMEOUT:-90}" "$NODE" drive.mjs \
      --url "http://127.0.0.1:$PLAYGROUND_PORT_INSIDE" --steps "$steps" --out "$out")
    ;;

  serve)  # inside the namespace, for `open`: the stack plus the inner half of the bridge
    sock=${2:?} work=${3:?}
    trap 'stop_all' EXIT
    trap 'exit 0' INT TERM
    start_stack "$work"
    "$NODE" "$E2E/bridge.mjs" "unix:$sock" "tcp:127.0.0.1:$PLAYGROUND_PORT_INSIDE" &
    pids+=($!)
    status=0
    wait "${pids[0]}" || status=$?
    # Ctrl-C reaches the bot too, and it stops cleanly (0); anything else is a crash.
    [ "$status" = 0 ] || die "the bot stopped ($status); its last lines:$(printf '\n'; tail -n 20 "$work/bot.log")"
    ;;

  open)
    port=${PLAYGROUND_PORT:-56150}
    export DATABASE_URL=${DATABASE_URL:-sqlite://$ROOT/fusion.sqlite3}
    # shellcheck disable=SC2046
    unshare $(unshare_args) true 2>/dev/null || die "cannot make a loopback-only network namespace \
here ($(unshare $(unshare_args) true 2>&1 | head -n 1)). Linux only; as a non-root user it needs \
unprivileged user namespaces (some distributions restrict them: sysctl \
kernel.apparmor_restrict_unprivileged_userns), otherwise run it as root."
    run=$(mktemp -d)
    chmod 755 "$run"
    sock=$run/playground.sock
    # shellcheck disable=SC2046
    unshare $(unshare_args) "$0" serve "$sock" "$run" &
    pids+=($!)
    trap 'stop_all; rm -rf "$run"' EXIT
    trap 'exit 0' INT TERM
    for _ in $(seq 1 $((START_TIMEOUT * 10))); do
      [ -S "$sock" ] && break
      kill -0 "${pids[0]}" 2>/dev/null || die "the bot or the Playground did not start (see above)"
      sleep 0.1
    done
    [ -S "$sock" ] || die "the bot or the Playground did not start within ${START_TIMEOUT}s"
    "$NODE" "$E2E/bridge.mjs" "tcp:127.0.0.1:$port" "unix:$sock" &
    pids+=($!)
    wait_http "http://127.0.0.1:$port/" "${pids[-1]}" "the bridge to 127.0.0.1:$port" /dev/null
    say "Open http://127.0.0.1:$port in your browser and type 'help' to the bot (you are Alex Wilber,"
    say "an admin here). Ctrl-C stops everything. Logs: $run/bot.log, $run/playground.out"
    say "The demo catalog is in $DATABASE_URL; '.venv/bin/python -m bot usage' reads it too."
    wait "${pids[0]}" || true
    ;;

  *)
    sed -n '2,8p' "$0" >&2
    exit 2
    ;;
esac
