-- wrk script: GET a random user's recommendations (ids u<zero-padded n>), print percentiles as JSON.
-- Environment: SR_PATH (a format with %s for the user id), SR_KEY, SR_USERS, SR_WIDTH, SR_PREFIX,
-- SR_DELAY_MS (pause before each request of a connection: a paced load below the maximum),
-- SR_IDS_FILE (user ids one a line, picked at random instead of the numbered ids: e.g. the model's users).
local path_fmt = os.getenv("SR_PATH") or "/v1/users/%s/recommendations?n=20"
local key = os.getenv("SR_KEY") or ""
local n_users = tonumber(os.getenv("SR_USERS") or "1000")
local width = tonumber(os.getenv("SR_WIDTH") or "7")
local prefix = os.getenv("SR_PREFIX") or "u"
local fmt = prefix .. "%0" .. width .. "d"
local delay_ms = tonumber(os.getenv("SR_DELAY_MS") or "0")
local ids_file = os.getenv("SR_IDS_FILE")
local ids = nil
if ids_file and ids_file ~= "" then
  ids = {}
  for line in io.lines(ids_file) do
    ids[#ids + 1] = line
  end
end

function setup(thread)
  thread:set("seed", math.random(1, 1000000))
end

function init(args)
  math.randomseed(seed or 1)
  wrk.headers["Authorization"] = "Bearer " .. key
end

function request()
  local user = ids and ids[math.random(1, #ids)] or string.format(fmt, math.random(1, n_users))
  return wrk.format("GET", string.format(path_fmt, user))
end

if delay_ms > 0 then
  function delay()
    return delay_ms
  end
end

function done(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "errors": %d, "p50_us": %d, "p95_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors,
    latency:percentile(50), latency:percentile(95), latency:percentile(99), latency.max))
end
