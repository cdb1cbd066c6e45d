-- bench/wrk/load.lua - the wrk script of every bench/run.sh scenario.
-- Configured through the environment (bench/run.sh sets it):
--   BENCH_PATH    request path and query (default /api/my/todos?limit=3)
--   BENCH_METHOD  GET (default) or POST
--   BENCH_BODY    request body of a POST (sent as application/json)
--   BENCH_USERS   number of users; 0: no identity headers (SP routes)
--   BENCH_KIND    user name prefix: user i is <KIND><i, 4 digits>@bench.example
--                 with token tok-<KIND><i, 4 digits> (as bench/run.sh made them)
--   BENCH_FIRST   number of the first user (default 1)
--   BENCH_DIST    rr (round robin, default) or zipf (popularity ~ 1/rank^s)
--   BENCH_ZIPF_S  the Zipf exponent (default 1.1)
--   BENCH_THREADS wrk's -t, so threads take disjoint users
-- Requests are prebuilt per user, so choosing one costs a table lookup.
-- done() prints one BENCHRESULT line (latencies in microseconds).

local path = os.getenv("BENCH_PATH") or "/api/my/todos?limit=3"
local method = os.getenv("BENCH_METHOD") or "GET"
local body = os.getenv("BENCH_BODY")
local users = tonumber(os.getenv("BENCH_USERS") or "0")
local kind = os.getenv("BENCH_KIND") or "u"
local first = tonumber(os.getenv("BENCH_FIRST") or "1")
local dist = os.getenv("BENCH_DIST") or "rr"
local zipf_s = tonumber(os.getenv("BENCH_ZIPF_S") or "1.1")
local nthreads = tonumber(os.getenv("BENCH_THREADS") or "2")

local thread_count = 0
function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
end

local reqs = {}
local cdf = nil
local next_user = 1
local first_user = 1
local stride = 1

local function build(i)
   local headers = {}
   if method == "POST" then
      headers["Content-Type"] = "application/json"
   end
   if users > 0 then
      local n = string.format("%s%04d", kind, first + i - 1)
      headers["X-Forwarded-Email"] = n .. "@bench.example"
      headers["X-Forwarded-Access-Token"] = "tok-" .. n
   end
   return wrk.format(method, path, headers, body)
end

function init(args)
   local count = users > 0 and users or 1
   for i = 1, count do
      reqs[i] = build(i)
   end
   local t = thread_index or 0
   -- Round robin: thread t takes users t+1, t+1+nthreads, ..., so no two
   -- threads ask for the same user at once (threads that started apart
   -- would otherwise drift into step and double every user's concurrency).
   -- Fewer users than threads: every thread takes all of them.
   if count >= nthreads then
      first_user = t % nthreads + 1
      stride = nthreads
   end
   next_user = first_user
   math.randomseed(os.time() + t * 7919)
   if dist == "zipf" and users > 1 then
      cdf = {}
      local total = 0
      for k = 1, users do
         total = total + 1 / (k ^ zipf_s)
         cdf[k] = total
      end
      for k = 1, users do
         cdf[k] = cdf[k] / total
      end
   end
end

-- The smallest k with cdf[k] >= u.
local function zipf_pick()
   local u = math.random()
   local lo, hi = 1, #cdf
   while lo < hi do
      local mid = math.floor((lo + hi) / 2)
      if cdf[mid] < u then lo = mid + 1 else hi = mid end
   end
   return lo
end

function request()
   if cdf then
      return reqs[zipf_pick()]
   end
   local r = reqs[next_user]
   next_user = next_user + stride
   if next_user > #reqs then next_user = first_user end
   return r
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "BENCHRESULT requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d " ..
      "p50=%d p90=%d p99=%d max=%d mean=%d\n",
      summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency.max, math.floor(latency.mean)))
end
