-- wrk script for loadtest/key_flood.py: POST /check with a new user id in every request.
-- Thread t sends the ids <prefix><t>-0 .. <prefix><t>-<per_thread - 1>, then repeats its last id
-- (no new key) until key_flood.py stops wrk (SIGINT) once the server has seen every id, or wrk's
-- -d ends: the flood is bounded in distinct ids (threads x per_thread) and in time.
-- Arguments (after `--`): per_thread prefix
local threads = {}
local next_thread = 0

function setup(thread)
  thread:set("tid", next_thread)
  next_thread = next_thread + 1
  table.insert(threads, thread)
end

function init(args)
  per_thread = tonumber(args[1]) or 1000
  sent = 0
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  head = '{"user":"' .. (args[2] or "f") .. tid .. "-"
end

function request()
  local n = sent
  if n < per_thread then sent = n + 1 else n = per_thread - 1 end
  return wrk.format(nil, "/check", nil, head .. n .. '"}')
end

function done(summary, latency, requests)
  local ids = 0
  for _, t in ipairs(threads) do ids = ids + (t:get("sent") or 0) end
  io.write(string.format("KEY_FLOOD ids_generated=%d\n", ids))
end
