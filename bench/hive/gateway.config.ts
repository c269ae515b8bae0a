// Hive Gateway runtime settings for the benchmark: serve only POST/GET /graphql, no UI, no
// reporting/telemetry, quiet logs. Host/port/fork come from start.sh (CLI flags).
import { defineConfig } from '@graphql-hive/gateway';

export const gatewayConfig = defineConfig({
  supergraph: './supergraph.graphql',
  graphiql: false,
  landingPage: false,
  // No usage reporting, tracing, OpenTelemetry or Prometheus are configured, and start.sh
  // unsets the HIVE_* / APOLLO_* / OPENTELEMETRY env vars that would switch them on.
  logging: (process.env.HIVE_LOG_LEVEL as 'error' | 'warn' | 'info' | 'debug' | undefined) ?? 'error',
});
