-- wrk script: POST ~1 KB chat completion bodies to Tollgate, nginx or the fake upstream.
-- Settings come from the environment (set by bench/run.mjs):
--   BENCH_PATH   request path (default /v1/chat/completions)
--   BENCH_KEY    bearer key (gateway key for Tollgate; any value for nginx and direct)
--   BENCH_STREAM 1: "stream": true with stream_options.include_usage
--   BENCH_UNIQUE 1: every body differs (a per-thread counter), so Tollgate's cache lookup misses;
--                0: the same body every time (cache hits after the first)
--   BENCH_NONCE  makes bodies of this run differ from earlier runs
-- done() prints one JSON line prefixed with "BENCH_RESULT " for the orchestrator.
local path = os.getenv("BENCH_PATH") or "/v1/chat/completions"
local key = os.getenv("BENCH_KEY") or "none"
local stream = os.getenv("BENCH_STREAM") == "1"
local unique = os.getenv("BENCH_UNIQUE") == "1"
local nonce = os.getenv("BENCH_NONCE") or "0"

local headers = {
  ["Authorization"] = "Bearer " .. key,
  ["Content-Type"] = "application/json",
}

local system = "You are a concise financial analyst assistant. Answer in plain English, at most five sentences, " ..
  "no bullet points, no tables. If a figure is missing from the report, say so instead of guessing. " ..
  "Always mention revenue growth, margins, cash and the outlook when they are given."
local report = "Quarterly report excerpt: revenue 29.4M USD (+12% YoY), subscription revenue 21.1M (+19%), " ..
  "hardware 8.3M (flat). Operating expenses 17.9M (+4%), headcount 412 (+38, mostly engineering and support). " ..
  "Gross margin 61% (58% a year ago). Cash and equivalents 48.2M. Guidance next quarter: revenue 30-32M; " ..
  "risks: FX, longer enterprise sales cycles. Please summarise this for the board."

local streamPart = stream and ',"stream":true,"stream_options":{"include_usage":true}' or ''
local prefix = '{"model":"gpt-4o-mini","max_tokens":256,"temperature":0.2' .. streamPart ..
  ',"messages":[{"role":"system","content":"' .. system .. '"},{"role":"user","content":"'
local suffix = '"}]}'

local thread_id = 0
local counter = 0
local fixed_body = prefix .. report .. " [run " .. nonce .. "]" .. suffix

local threads = {}
local next_id = 0
function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
  table.insert(threads, thread)
end

function request()
  if unique then
    counter = counter + 1
    return wrk.format("POST", path, headers, prefix .. report .. " [run " .. nonce .. " t" .. thread_id .. " n" .. counter .. "]" .. suffix)
  end
  return wrk.format("POST", path, headers, fixed_body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
