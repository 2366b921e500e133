// Pi Hopper: hop over the falling crumbs; the score goes to the scores service (/scores).
"use strict";
const canvas = document.getElementById("game");
const ctx = canvas.getContext("2d");
let y = 300, vy = 0, score = 0, crumbs = [];

async function showBest() {
  const res = await fetch("/leaderboard/top");
  if (res.ok) document.getElementById("best").textContent = `best: ${(await res.json()).best}`;
}

function frame() {
  vy += 0.6; y = Math.min(300, y + vy);
  if (Math.random() < 0.03) crumbs.push({ x: 640 });
  crumbs = crumbs.map((c) => ({ x: c.x - 4 })).filter((c) => c.x > -10);
  if (crumbs.some((c) => c.x > 40 && c.x < 70 && y > 280)) {
    fetch("/scores", { method: "POST", body: JSON.stringify({ score }) }).then(showBest);
    score = 0; crumbs = [];
  } else score += 1;
  ctx.fillStyle = "#0b1020"; ctx.fillRect(0, 0, 640, 360);
  ctx.fillStyle = "#c51a4a"; ctx.fillRect(50, y, 20, 20);
  ctx.fillStyle = "#e6e9f0"; crumbs.forEach((c) => ctx.fillRect(c.x, 310, 10, 10));
  ctx.fillText(`score ${score}`, 10, 20);
  requestAnimationFrame(frame);
}
addEventListener("keydown", () => { if (y >= 300) vy = -11; });
showBest();
frame();
