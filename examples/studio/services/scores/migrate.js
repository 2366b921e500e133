// The release's schema change: run once per release by picluster (`migrate`), before the new
// pods start. Idempotent, and compatible with the previous release's code, which keeps running
// if this fails.
"use strict";
const { Client } = require("pg");

async function main() {
  const client = new Client({ connectionString: process.env.DATABASE_URL });
  await client.connect();
  try {
    await client.query(`CREATE TABLE IF NOT EXISTS scores (
      id bigserial PRIMARY KEY,
      score integer NOT NULL CHECK (score >= 0),
      created_at timestamptz NOT NULL DEFAULT now())`);
    await client.query("CREATE INDEX IF NOT EXISTS scores_score ON scores (score DESC)");
    console.log("migrate: scores table ready");
  } finally {
    await client.end();
  }
}

main().catch((error) => {
  console.error(`migrate: ${error.message}`);
  process.exit(1);
});
