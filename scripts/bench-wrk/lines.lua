-- POST the lines of BENCH_FILE as form bodies, each once (pre-signed private_key_jwt grants:
-- every assertion has its own jti, so none may be sent twice). When the lines run out the body
-- is empty and the server refuses it: the run then shows non-2xx answers and is void.
local bodies = {}
for line in io.lines(os.getenv("BENCH_FILE")) do bodies[#bodies + 1] = line end
local next_body = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"

request = function()
  next_body = next_body + 1
  return wrk.format(nil, nil, nil, bodies[next_body] or "")
end

-- the first refusal of the run, on stderr: why a void run is void
local told = false
response = function(status, headers, body)
  if status >= 300 and not told then
    told = true
    io.stderr:write("first refusal: " .. status .. " " .. body:sub(1, 300) .. "\n")
  end
end
