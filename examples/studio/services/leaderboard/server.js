// The leaderboard: GET /leaderboard/top asks the scores service for the best score.
"use strict";
const http = require("node:http");

const scores = process.env.SCORES_URL || "http://scores:3000";

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, "http://localhost").pathname;
  res.setHeader("content-type", "application/json");
  if (path === "/leaderboard/health") return res.end('{"status":"ok"}');
  if (path === "/leaderboard/top") {
    try {
      const answer = await fetch(`${scores}/scores/top`);
      res.statusCode = answer.status;
      return res.end(await answer.text());
    } catch (error) {
      res.statusCode = 503;
      return res.end(JSON.stringify({ error: error.message }));
    }
  }
  res.statusCode = 404;
  res.end('{"error":"not found"}');
});
server.listen(Number(process.env.PORT || 3000), () => console.log("leaderboard listening"));
process.on("SIGTERM", () => server.close(() => process.exit(0)));
