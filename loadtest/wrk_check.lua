wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0
request = function()
  n = n + 1
  return wrk.format(nil, "/check", nil, '{"user":"u' .. (n % 1000) .. '","tenant":"t1"}')
end
