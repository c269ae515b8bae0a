-- Generic wrk script: POST a fixed JSON body (e.g. a GraphQL request) to the URL given to wrk.
-- Usable for any gateway (Hive Gateway, OrgGraph).
--
--   WRK_BODY       the request body (JSON text), or
--   WRK_BODY_FILE  path to a file holding it (used when WRK_BODY is unset)
--   WRK_AUTH       optional: value of an Authorization header to send
--   WRK_CHECK=1    optional: also count 2xx responses whose body contains "errors" (a GraphQL
--                  error delivered with HTTP 200) and print the count; costs a little client CPU
--
--   WRK_BODY='{"query":"{ __typename }"}' wrk -t1 -c32 -d10s --latency -s post.lua http://127.0.0.1:4000/graphql

local body = os.getenv("WRK_BODY")
if body == nil or body == "" then
  local path = os.getenv("WRK_BODY_FILE")
  if path == nil or path == "" then
    error("post.lua: set WRK_BODY or WRK_BODY_FILE")
  end
  local f = assert(io.open(path, "rb"))
  body = f:read("*a")
  f:close()
end

wrk.method = "POST"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json"
local auth = os.getenv("WRK_AUTH")
if auth ~= nil and auth ~= "" then
  wrk.headers["Authorization"] = auth
end

if os.getenv("WRK_CHECK") == "1" then
  local threads = {}

  function setup(thread)
    table.insert(threads, thread)
  end

  function init(args)
    gql_errors = 0
    checked = 0
  end

  function response(status, headers, resp_body)
    checked = checked + 1
    if status >= 200 and status < 300 and resp_body ~= nil and string.find(resp_body, '"errors"', 1, true) then
      gql_errors = gql_errors + 1
    end
  end

  function done(summary, latency, requests)
    local errs, total = 0, 0
    for _, t in ipairs(threads) do
      errs = errs + (t:get("gql_errors") or 0)
      total = total + (t:get("checked") or 0)
    end
    io.write(string.format("  GraphQL-error responses (HTTP 2xx with \"errors\"): %d of %d\n", errs, total))
  end
end
