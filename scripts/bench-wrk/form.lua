-- POST one fixed form body (BENCH_BODY) to the URL, e.g. a client_credentials grant whose
-- client authenticates with HTTP Basic (wrk -H "Authorization: Basic …").
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.body = os.getenv("BENCH_BODY")

-- the first refusal of the run, on stderr: why a void run is void
local told = false
response = function(status, headers, body)
  if status >= 300 and not told then
    told = true
    io.stderr:write("first refusal: " .. status .. " " .. body:sub(1, 300) .. "\n")
  end
end
