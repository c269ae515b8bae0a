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
  local requests = {}
  request = function()
    i = i % #bodies + 1
    local r = requests[i]
    if r == nil then
      r = wrk.format(nil, nil, nil, bodies[i])
      requests[i] = r
    end
    return r
  end
end
