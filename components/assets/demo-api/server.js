// Demo API for picluster's default app: a dependency-free Node.js service that answers under its
// route prefix, reports whether PostgreSQL is reachable, and exposes Prometheus metrics.
"use strict";

const http = require("node:http");
const net = require("node:net");
const os = require("node:os");

const port = Number(process.env.PORT || 3000);
const prefix = process.env.ROUTE_PREFIX || "/api";
const database = new URL(process.env.DATABASE_URL || "postgresql://localhost:5432/game");

const requests = new Map();
const buckets = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];
const durations = { counts: buckets.map(() => 0), sum: 0, count: 0 };

function databaseReachable() {
  return new Promise((resolve) => {
    const socket = net.connect(Number(database.port || 5432), database.hostname);
    const done = (ok) => {
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(1000, () => done(false));
    socket.once("connect", () => done(true));
    socket.once("error", () => done(false));
  });
}

function metrics() {
  const lines = [
    "# HELP http_requests_total HTTP requests by route and status code.",
    "# TYPE http_requests_total counter",
  ];
  for (const [key, value] of requests) {
    const [route, code] = key.split(" ");
    lines.push(`http_requests_total{route="${route}",code="${code}"} ${value}`);
  }
  lines.push(
    "# HELP http_request_duration_seconds HTTP request latency.",
    "# TYPE http_request_duration_seconds histogram",
  );
  buckets.forEach((le, i) => {
    lines.push(`http_request_duration_seconds_bucket{le="${le}"} ${durations.counts[i]}`);
  });
  lines.push(`http_request_duration_seconds_bucket{le="+Inf"} ${durations.count}`);
  lines.push(`http_request_duration_seconds_sum ${durations.sum}`);
  lines.push(`http_request_duration_seconds_count ${durations.count}`);
  lines.push("# TYPE process_uptime_seconds gauge", `process_uptime_seconds ${process.uptime()}`);
  return `${lines.join("\n")}\n`;
}

function record(route, code, started) {
  const key = `${route} ${code}`;
  requests.set(key, (requests.get(key) || 0) + 1);
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  buckets.forEach((le, i) => {
    if (seconds <= le) durations.counts[i] += 1;
  });
  durations.sum += seconds;
  durations.count += 1;
}

function send(res, code, body, type = "application/json") {
  res.writeHead(code, { "content-type": type });
  res.end(type === "application/json" ? JSON.stringify(body) : body);
}

const server = http.createServer(async (req, res) => {
  const started = process.hrtime.bigint();
  const path = new URL(req.url, "http://localhost").pathname;
  let route = "other";
  if (path === "/metrics") {
    send(res, 200, metrics(), "text/plain; version=0.0.4");
    return;
  }
  if (path === `${prefix}/health`) {
    route = "health";
    const reachable = await databaseReachable();
    send(res, reachable ? 200 : 503, { status: reachable ? "ok" : "degraded", database: reachable });
  } else if (path === `${prefix}/hello` || path === prefix || path === `${prefix}/`) {
    route = "hello";
    send(res, 200, { message: "Hello from the picluster demo API", hostname: os.hostname() });
  } else {
    send(res, 404, { error: "not found" });
  }
  record(route, res.statusCode, started);
});

server.listen(port, () => console.log(`demo API listening on :${port}, routes under ${prefix}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
