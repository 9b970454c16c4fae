// The engine console's only script: redraws the traffic page every 3 s from
// /console/api/traffic, ticks "select all" boxes, asks before buttons marked data-confirm, and
// takes an action's `done=` out of the address once its banner is shown (so a refresh does not
// show it again). Pages work without it.
"use strict";

const W = 360, H = 80;

function points(values, max) {
  const n = Math.max(values.length, 2) - 1;
  return values.map((v, i) => {
    const x = (W * i) / n;
    const y = H - (v / max) * (H - 4) - 2;
    return x.toFixed(1) + "," + y.toFixed(1);
  }).join(" ");
}

function ms(v) {
  return v == null ? "—" : "≤ " + v + " ms";
}

function redraw(card, s) {
  const m = s.minute;
  const set = (k, text) => {
    const el = card.querySelector('[data-k="' + k + '"]');
    if (el) el.textContent = text;
  };
  set("rate", s.requests_per_sec.toFixed(1));
  for (const k of ["ok", "client_errors", "server_errors", "verify_failures", "limited"]) set(k, String(m[k]));
  set("p50_ms", ms(m.p50_ms));
  set("p99_ms", ms(m.p99_ms));
  for (const fig of card.querySelectorAll("figure.chart")) {
    const lines = fig.querySelectorAll("polyline");
    const series = [...lines].map((l) => s.seconds.map((c) => c[l.dataset.key] || 0));
    const max = Math.max(1, ...series.flat());
    lines.forEach((l, i) => {
      l.setAttribute("points", points(series[i], max));
      // a series that is zero throughout is not drawn (a flat line reads as something happening)
      l.classList.toggle("idle", series[i].every((v) => v === 0));
    });
    const label = fig.querySelector(".max");
    if (label) label.textContent = "max " + max.toFixed(1);
  }
}

async function refresh(root) {
  try {
    const res = await fetch(root.dataset.source, { credentials: "same-origin", cache: "no-store" });
    if (res.status === 401) { window.location = "/console/login"; return; }
    if (!res.ok) return;
    const data = await res.json();
    for (const s of data.pipelines) {
      const card = root.querySelector('[data-pipeline="' + CSS.escape(s.pipeline) + '"]');
      if (card) redraw(card, s);
    }
    root.dataset.updated = String(data.now);
  } catch (_) {
    // the next tick tries again
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const url = new URL(window.location.href);
  if (url.searchParams.has("done")) {
    url.searchParams.delete("done");
    window.history.replaceState(null, "", url.pathname + url.search + url.hash);
  }
  const traffic = document.getElementById("traffic");
  if (traffic) {
    refresh(traffic);
    setInterval(() => refresh(traffic), 3000);
  }
  for (const all of document.querySelectorAll("input.all")) {
    all.addEventListener("change", () => {
      for (const box of all.closest("form").querySelectorAll('input[name="id"]')) box.checked = all.checked;
    });
  }
  for (const button of document.querySelectorAll("button[data-confirm]")) {
    button.addEventListener("click", (e) => {
      if (!window.confirm(button.dataset.confirm)) e.preventDefault();
    });
  }
});
