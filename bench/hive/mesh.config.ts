// Mesh Compose config: turns openapi.json (GET /organizations/{organization}) into a supergraph
// that Hive Gateway serves. Query field: get_organization(organization: String!): Organization.
//
// The upstream base URL and the Authorization header are NOT baked into the composed file: they
// are string-interpolation templates ({env.X}) that @graphql-mesh/transport-rest resolves from
// the gateway process's environment on every request (it interpolates the endpoint and path per
// request anyway, so this costs nothing extra). So supergraph.graphql holds no secret, and the
// same file works for any UPSTREAM_URL / PSCALE_AUTH.
import { defineConfig } from '@graphql-mesh/compose-cli';
import { loadOpenAPISubgraph } from '@omnigraph/openapi';

export const composeConfig = defineConfig({
  subgraphs: [
    {
      sourceHandler: loadOpenAPISubgraph('PlanetScale', {
        source: './openapi.json',
        endpoint: '{env.UPSTREAM_URL}',
        operationHeaders: {
          // PlanetScale service-token format: "<SERVICE_TOKEN_ID>:<SERVICE_TOKEN>" (no scheme).
          Authorization: '{env.PSCALE_AUTH}',
        },
      }),
    },
  ],
});
