/**
 * The GraphQL documents the dashboard sends, as persisted queries (APQ).
 *
 * tests/test_dashboard.py reads this file: each document is a plain template literal (no
 * interpolation), validated against the schema and costed against the default
 * `max_upstream_calls` (50) with every page size offered here. A document's text is its
 * identity (its SHA-256 is the APQ hash), so edit it here and nowhere else.
 */

/**
 * Rows per page the table offers. The overview's estimated upstream calls grow by about one
 * per row (each Upsun organization needs its own subscriptions walk), so 25 rows cost 32 of
 * the 50 calls allowed by default (33 on later pages): room for the budget to stay a margin.
 */
export const PAGE_SIZES = [10, 25];
export const DEFAULT_PAGE_SIZE = 25;

/** Subscriptions read per organization by the overview (for the summary's counts). */
export const OVERVIEW_SUBSCRIPTIONS = 20;

/**
 * Everything the page shows outside an organization's detail, in one round trip: provider
 * health, and one page of organizations with their usage metrics (for the bars and the
 * near-limit count) and subscription statuses (for the billing counts).
 */
export const OVERVIEW = `query DashboardOverview($first: Int!, $after: String, $providers: [Provider!]) {
  providers {
    provider
    configured
    healthy
    circuitState
    recentCalls
    recentFailures
    latencyP50Ms
    latencyP95Ms
    lastErrorCode
  }
  organizations(first: $first, after: $after, providers: $providers) {
    pageInfo {
      hasNextPage
      endCursor
    }
    nodes {
      id
      provider
      name
      plan
      status
      billingEmail
      usage {
        metrics {
          key
          label
          value
          limit
          unit
        }
      }
      subscriptions(first: 20) {
        pageInfo {
          hasNextPage
        }
        nodes {
          status
        }
      }
    }
  }
}`;

/** One organization's detail: every field the panel shows, usage history and `raw`. */
export const DETAIL = `query DashboardOrganization($id: ID!) {
  node(id: $id) {
    id
    ... on Organization {
      provider
      providerId
      name
      slug
      plan
      status
      billingEmail
      currency
      timezone
      createdAt
      updatedAt
      raw
      usage {
        metrics {
          key
          label
          value
          limit
          unit
        }
        history {
          key
          at
          value
        }
      }
      subscriptions(first: 50) {
        pageInfo {
          hasNextPage
        }
        nodes {
          id
          providerId
          plan
          status
          providerStatus
          currentPeriodStart
          currentPeriodEnd
          trialEndsAt
          cancelAt
        }
      }
    }
  }
}`;
