// The scores service: POST /scores {score}, GET /scores/top. It follows picluster's service
// contract: listens on PORT, reads DATABASE_URL, keeps its /scores prefix, writes nothing but
// /tmp, answers /scores/health, stops cleanly on SIGTERM.
"use strict";
const http = require("node:http");
const { Pool } = require("pg");

const pool = new Pool({ connectionString: process.env.DATABASE_URL, max: 4 });

function send(res, code, body) {
  res.writeHead(code, { "content-type": "application/json" });
  res.end(JSON.stringify(body));
}

async function handle(req, res) {
  const path = new URL(req.url, "http://localhost").pathname;
  if (path === "/scores/health") {
    await pool.query("SELECT 1");
    return send(res, 200, { status: "ok" });
  }
  if (path === "/scores/top") {
    const { rows } = await pool.query("SELECT coalesce(max(score), 0) AS best FROM scores");
    return send(res, 200, { best: Number(rows[0].best) });
  }
  if (path === "/scores" && req.method === "POST") {
    let body = "";
    for await (const chunk of req) body += chunk;
    const score = Number(JSON.parse(body || "{}").score);
    if (!Number.isInteger(score) || score < 0) return send(res, 400, { error: "score" });
    await pool.query("INSERT INTO scores (score) VALUES ($1)", [score]);
    return send(res, 201, { score });
  }
  return send(res, 404, { error: "not found" });
}

const server = http.createServer((req, res) => {
  handle(req, res).catch((error) => send(res, 503, { error: error.message }));
});
server.listen(Number(process.env.PORT || 3000), () => console.log("scores listening"));
process.on("SIGTERM", () => server.close(() => pool.end().then(() => process.exit(0))));
