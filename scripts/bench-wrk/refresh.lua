-- refresh_token grants with rotation: a pool of refresh tokens (BENCH_FILE, one per line, at
-- least one per connection); each request takes one out, each answer puts its rotated
-- successor back, so no token is ever sent twice. The client authenticates with HTTP Basic
-- (wrk -H "Authorization: Basic …"). An empty pool sends an empty token, which the server
-- refuses: the run then shows non-2xx answers and is void.
local pool = {}
for line in io.lines(os.getenv("BENCH_FILE")) do pool[#pool + 1] = line end
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

request = function()
  local token = table.remove(pool) or ""
  return wrk.format(nil, nil, nil, "grant_type=refresh_token&refresh_token=" .. token)
end

local told = false
response = function(status, headers, body)
  local token = body:match('"refresh_token"%s*:%s*"([^"]+)"')
  if token then
    pool[#pool + 1] = token
  elseif not told then
    -- the first refusal of the run, on stderr: why a void run is void
    told = true
    io.stderr:write("first refusal: " .. status .. " " .. body:sub(1, 300) .. "\n")
  end
end
