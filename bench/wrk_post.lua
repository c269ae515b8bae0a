-- wrk script for bench/run.py: POST a JSON body (WRK_BODY) or rotate through several bodies
-- (WRK_BODIES, separated by the ASCII record separator \30), with an optional Authorization.
local body = os.getenv("WRK_BODY") or ""
local auth = os.getenv("WRK_AUTH") or ""
local bodies = {}
local multi = os.getenv("WRK_BODIES") or ""
for b in string.gmatch(multi, "[^\30]+") do
  table.insert(bodies, b)
end

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
if #auth > 0 then
  wrk.headers["Authorization"] = auth
end
wrk.body = body

if #bodies > 0 then
  local i = 0
  request = function()
    i = i % #bodies + 1
    return wrk.format(nil, nil, nil, bodies[i])
  end
end
