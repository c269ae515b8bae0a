#!/usr/bin/env bash
# Install the pinned Hive Gateway / Mesh Compose toolchain into bench/hive/node_modules.
# Idempotent: skips the install when node_modules already matches package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "bench/hive/setup.sh: node and npm are required (Node >= 20) but were not found on PATH." >&2
  echo "Install Node.js 20+ (which ships npm), then re-run this script." >&2
  exit 1
fi
node_major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$node_major" -lt 20 ]; then
  echo "bench/hive/setup.sh: Node >= 20 is required, found $(node -v)." >&2
  exit 1
fi

# npm writes node_modules/.package-lock.json after a successful install; if it is newer than
# both package.json and package-lock.json, the tree is current and there is nothing to do.
stamp=node_modules/.package-lock.json
if [ -f package-lock.json ] && [ -f "$stamp" ] && [ "$stamp" -nt package-lock.json ] && [ "$stamp" -nt package.json ]; then
  echo "bench/hive: node_modules is up to date"
  exit 0
fi

if [ -f package-lock.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
else
  npm install --no-audit --no-fund --loglevel=error
fi
echo "bench/hive: installed $(node -p 'require("@graphql-hive/gateway/package.json").version' 2>/dev/null || echo '?') of @graphql-hive/gateway"
