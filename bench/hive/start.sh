#!/usr/bin/env bash
# Compose the supergraph from openapi.json + mesh.config.ts, then run Hive Gateway in the
# foreground on 127.0.0.1:$PORT (exec'd when HIVE_FORK=1, so the caller's PID is the gateway;
# SIGTERM it to stop).
#
# Required env:  UPSTREAM_URL  base URL of the PlanetScale-compatible REST API (e.g. http://127.0.0.1:9104)
#                PSCALE_AUTH   value of the upstream Authorization header ("<token_id>:<token>")
#                PORT          port to listen on (loopback only)
# Optional env:  HIVE_FORK        worker processes (default 1 = single Node process)
#                HIVE_LOG_LEVEL   error|warn|info|debug (default error)
#                HIVE_JIT=1       enable graphql-jit execution (off by default, as in Hive's defaults)
set -euo pipefail
cd "$(dirname "$0")"

: "${UPSTREAM_URL:?set UPSTREAM_URL, e.g. http://127.0.0.1:9104}"
: "${PSCALE_AUTH:?set PSCALE_AUTH to <service_token_id>:<service_token>}"
: "${PORT:?set PORT, e.g. 4000}"
if [ ! -x node_modules/.bin/hive-gateway ] || [ ! -x node_modules/.bin/mesh-compose ]; then
  echo "bench/hive/start.sh: dependencies missing, run bench/hive/setup.sh first" >&2
  exit 1
fi
export UPSTREAM_URL="${UPSTREAM_URL%/}" PSCALE_AUTH PORT

# Nothing may phone home: drop every env var the gateway CLI reads to enable usage reporting,
# tracing, registry/CDN/uplink schema fetching or OpenTelemetry, plus ones that change behaviour.
unset HIVE_TARGET HIVE_ACCESS_TOKEN HIVE_USAGE_ACCESS_TOKEN HIVE_TRACE_ACCESS_TOKEN \
      HIVE_TRACE_ENDPOINT HIVE_REGISTRY_TOKEN HIVE_USAGE_TARGET HIVE_CDN_ENDPOINT HIVE_CDN_KEY \
      HIVE_ROUTER_RUNTIME APOLLO_KEY APOLLO_GRAPH_REF APOLLO_SCHEMA_CONFIG_DELIVERY_ENDPOINT \
      OPENTELEMETRY OPENTELEMETRY_EXPORTER_TYPE DEV_REMOTE DEV_REGISTRY \
      CONFIG_PATH HOST POLLING DEBUG LOG_LEVEL FORK JIT RENDER_LEGACY_GRAPHIQL
export NODE_ENV=production DO_NOT_TRACK=1 LOG_LEVEL="${HIVE_LOG_LEVEL:-error}"

# Compose (~1.5 s). The file keeps {env.UPSTREAM_URL}/{env.PSCALE_AUTH} templates, no secrets.
# Output must end in .graphql; write aside and rename so a running gateway never sees half a file.
if ! compose_log="$(node_modules/.bin/mesh-compose -o supergraph.tmp.graphql 2>&1)"; then
  printf '%s\n' "$compose_log" >&2
  echo "bench/hive/start.sh: mesh-compose failed" >&2
  exit 1
fi
mv -f supergraph.tmp.graphql supergraph.graphql

fork="${HIVE_FORK:-1}"
args=(supergraph ./supergraph.graphql --config-path ./gateway.config.ts
      --host 127.0.0.1 --port "$PORT" --fork "$fork" --disable-websockets)
if [ "${HIVE_JIT:-0}" = "1" ]; then args+=(--jit); fi

if [ "$fork" -le 1 ]; then
  # Single process: exec, so the PID the caller holds IS the gateway; SIGTERM/SIGINT stop it.
  exec node_modules/.bin/hive-gateway "${args[@]}"
fi

# --fork N>1 (Node cluster): Hive Gateway 2.15.1's workers log "Stopped the server" on SIGTERM
# but then stay alive (observed here), so the primary never exits either. Supervise: forward
# the signal, give it 3 s, then SIGKILL the primary's workers and the primary. Only works when
# the caller signals this script (TERM/INT/HUP), not with SIGKILL.
node_modules/.bin/hive-gateway "${args[@]}" &
gw=$!
stop() {
  kill -TERM "$gw" 2>/dev/null || true
  for _ in $(seq 1 30); do kill -0 "$gw" 2>/dev/null || return 0; sleep 0.1; done
  pkill -KILL -P "$gw" 2>/dev/null || true
  kill -KILL "$gw" 2>/dev/null || true
}
trap 'stop; exit 143' TERM INT HUP
wait "$gw"
