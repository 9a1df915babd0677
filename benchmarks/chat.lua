-- wrk script for benchmarks/paths.py: POST chat completions, each with a prompt of its own (so no cache
-- answers it), optionally streamed; stops each thread after BENCH_REQUESTS/threads replies when set; prints
-- one JSON line of results.
local model = os.getenv("BENCH_MODEL") or "auto"
local stream = os.getenv("BENCH_STREAM") == "1"
local salt = os.getenv("BENCH_SALT") or "0"
local repeated = os.getenv("BENCH_REPEAT") == "1"  -- one prompt for every request: the score cache's best case
local next_id = 0

function setup(thread)
  next_id = next_id + 1
  thread:set("id", next_id)
end

local counter = 0
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

function request()
  counter = counter + 1
  local body = string.format(
    '{"model":"%s","messages":[{"role":"user","content":"Question %s-%d-%d: how far is the moon from the earth?"}]%s}',
    model, salt, repeated and 0 or id, repeated and 0 or counter, stream and ',"stream":true' or "")
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'RESULT {"requests":%d,"duration_us":%d,"errors":%d,"p50_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
