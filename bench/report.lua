-- wrk script: print one JSON line with the figures the benchmark needs (latencies in microseconds).
done = function(summary, latency, requests)
  local errors = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format(
    '{"requests": %d, "duration_us": %d, "errors": %d, "non_2xx": %d, "p50_us": %d, "p99_us": %d, "max_us": %d}\n',
    summary.requests, summary.duration, errors, summary.errors.status,
    latency:percentile(50), latency:percentile(99), latency.max))
end

-- WRK_CLIENTS=N: each request comes from one of N client addresses (X-Forwarded-For, which the app
-- trusts from its one proxy), as many callers behind nginx do; WRK_CLIENTS=1 is one address flooding.
local clients = tonumber(os.getenv("WRK_CLIENTS") or "0")
if clients == 1 then
  wrk.headers["X-Forwarded-For"] = "192.0.2.99"  -- outside the many clients' 10.x range
elseif clients > 0 then
  request = function()
    local n = math.random(0, clients - 1)
    wrk.headers["X-Forwarded-For"] = string.format("10.%d.%d.%d", math.floor(n / 65536) % 256, math.floor(n / 256) % 256, n % 256)
    return wrk.format()
  end
end
