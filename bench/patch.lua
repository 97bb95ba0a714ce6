-- wrk script for bench/run: PATCH /profile/<user> with a unique Idempotency-Key per request.
--
-- Users go round-robin (bench-0000 .. bench-<users-1>) so requests in flight never share a user
-- (the gateway serializes one user's changes). Every status is counted: wrk itself only flags
-- status >= 400, and a 202 (accepted, still pending) is not a completed change either.
--
-- Environment: BENCH_TOKEN (bearer token), BENCH_USERS (default 2000), BENCH_RUN (unique run id).
local token = os.getenv("BENCH_TOKEN") or "bench-token"
local users = tonumber(os.getenv("BENCH_USERS") or "2000")
local run = os.getenv("BENCH_RUN") or tostring(os.time())
-- The device fingerprint must be recent (limits.fingerprint_max_age_ms).
local body = '{"mobile_number":"9812345678","email_address":"bench@example.com",'
  .. '"upi":{"upi_number":"9876543210","vpa":"bench@okaxis","action":"change_vpa","consent":true,'
  .. '"device":{"fingerprint":"3f1c0d2e9a","fingerprint_timestamp":' .. string.format("%d", os.time() * 1000) .. '}}}'

local threads = {}
local next_id = 1

function setup(thread)
  thread:set("tid", next_id)
  next_id = next_id + 1
  table.insert(threads, thread)
end

function init(args)
  counter = 0
  statuses = {}
  ok = 0
  bad = 0
  -- Each thread starts at a different place in the user ring.
  offset = (tid - 1) * math.floor(users / 8)
end

function request()
  counter = counter + 1
  local user = string.format("bench-%04d", (offset + counter) % users)
  local key = string.format("wrk-%s-t%d-%010d", run, tid, counter)
  return wrk.format("PATCH", "/profile/" .. user, {
    ["Authorization"] = "Bearer " .. token,
    ["Content-Type"] = "application/json",
    ["Idempotency-Key"] = key,
  }, body)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  else
    bad = bad + 1
    local k = tostring(status)
    statuses[k] = (statuses[k] or 0) + 1
  end
end

function done(summary, latency, requests)
  local ok_total, bad_total = 0, 0
  local merged = {}
  for _, t in ipairs(threads) do
    ok_total = ok_total + (t:get("ok") or 0)
    bad_total = bad_total + (t:get("bad") or 0)
    local s = t:get("statuses") or {}
    for k, v in pairs(s) do
      merged[k] = (merged[k] or 0) + v
    end
  end
  local parts = {}
  for k, v in pairs(merged) do
    table.insert(parts, string.format('"%s":%d', k, v))
  end
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"ok":%d,"non200":%d,"socket_errors":%d,"timeouts":%d,"p50_ms":%.3f,"p99_ms":%.3f,"statuses":{%s}}\n',
    summary.requests, summary.duration, ok_total, bad_total,
    summary.errors.connect + summary.errors.read + summary.errors.write,
    summary.errors.timeout,
    latency:percentile(50) / 1000.0, latency:percentile(99) / 1000.0,
    table.concat(parts, ",")))
end
