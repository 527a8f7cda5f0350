// The qgjob dashboard: queues, agents, runs and failures, kept live by the
// server-sent events of /v1/stream (read with fetch, so the token travels in
// the Authorization header and never in a URL the server logs).

const $ = (sel) => document.querySelector(sel);
const TERMINAL = new Set(["passed", "failed", "cancelled", "error"]);
const jobs = new Map(); // job_id -> the job's latest view
let token = "";

function readToken() {
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("token")) {
    sessionStorage.setItem("qgjob-token", hash.get("token"));
    history.replaceState(null, "", location.pathname); // keep the token out of the address bar
  }
  return sessionStorage.getItem("qgjob-token") || "";
}

function showMessage(text) {
  $("#message").textContent = text;
  $("#message").hidden = !text;
}

function askForToken(text) {
  $("#board").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  setLive(false, "offline");
  showMessage(text);
}

function setLive(on, text) {
  const badge = $("#live");
  badge.textContent = text;
  badge.className = `badge ${on ? "on" : "off"}`;
}

async function api(path) {
  const answer = await fetch(path, { headers: { authorization: `Bearer ${token}` } });
  if (answer.status === 401 || answer.status === 403) {
    throw new AuthError((await answer.json()).message || "not allowed");
  }
  if (!answer.ok) throw new Error(`${path}: HTTP ${answer.status}`);
  return answer.json();
}

class AuthError extends Error {}

function cell(text, cls) {
  const td = document.createElement("td");
  td.textContent = text ?? "";
  if (cls) td.className = cls;
  return td;
}

function fill(table, rows, empty) {
  const body = $(`${table} tbody`);
  body.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = $(`${table} thead tr`).children.length;
    tr.append(td);
    body.append(tr);
  }
  for (const row of rows) body.append(row);
}

function age(seconds) {
  if (seconds < 90) return `${Math.round(seconds)} s`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min`;
  return `${(seconds / 3600).toFixed(1)} h`;
}

async function refreshAggregates() {
  const [metrics, agents] = await Promise.all([api("/v1/metrics"), api("/v1/agents")]);
  fill("#queues", metrics.queues.map((q) => {
    const tr = document.createElement("tr");
    tr.append(cell(q.app_version_id), cell(q.target), cell(q.depth), cell(age(q.oldest_age_s)), cell(q.best_priority));
    return tr;
  }), "no job is waiting");
  fill("#agents", agents.agents.map((a) => {
    const tr = document.createElement("tr");
    tr.append(cell(a.name || a.agent_id), cell(a.target), cell(a.state, `status ${a.state === "idle" || a.state === "busy" ? "passed" : ""}`),
      cell(a.installed_app || "–"), cell(a.current_batch || "–"));
    return tr;
  }), "no agent has registered");
}

function renderJobs() {
  const all = [...jobs.values()].sort((a, b) => (a.submitted_at < b.submitted_at ? 1 : -1));
  fill("#jobs", all.slice(0, 200).map((j) => {
    const tr = document.createElement("tr");
    tr.dataset.job = j.job_id;
    tr.append(cell(j.job_id), cell(j.test), cell(j.app_version_id), cell(j.target), cell(j.status, `status ${j.status}`),
      cell(j.attempts), cell(j.flaky ? "flaky" : ""));
    return tr;
  }), "no job yet");

  const runs = new Map();
  for (const j of all) {
    const r = runs.get(j.run_id) || { id: j.run_id, total: 0, passed: 0, failed: 0, running: 0, flaky: 0, last: "" };
    r.total += 1;
    if (j.status === "passed") r.passed += 1;
    else if (TERMINAL.has(j.status)) r.failed += 1;
    else if (j.status === "running" || j.status === "assigned") r.running += 1;
    if (j.flaky) r.flaky += 1;
    if (j.submitted_at > r.last) r.last = j.submitted_at;
    runs.set(j.run_id, r);
  }
  const box = $("#runs");
  box.replaceChildren();
  const recent = [...runs.values()].sort((a, b) => (a.last < b.last ? 1 : -1)).slice(0, 20);
  if (!recent.length) box.textContent = "no run yet";
  for (const r of recent) {
    const row = document.createElement("div");
    row.className = "run";
    row.dataset.run = r.id;
    const name = document.createElement("code");
    name.textContent = r.id;
    const bar = document.createElement("div");
    bar.className = "bar";
    for (const kind of ["passed", "failed", "running"]) {
      const part = document.createElement("span");
      part.className = kind;
      part.style.width = `${(100 * r[kind]) / r.total}%`;
      bar.append(part);
    }
    const counts = document.createElement("span");
    counts.className = "counts";
    const waiting = r.total - r.passed - r.failed - r.running;
    counts.textContent = `${r.passed} passed, ${r.failed} failed, ${r.flaky} flaky, ${r.running} running, ${waiting} waiting`;
    row.append(name, bar, counts);
    box.append(row);
  }

  const failures = all.filter((j) => j.status === "failed" || j.status === "error")
    .sort((a, b) => ((a.finished_at || "") < (b.finished_at || "") ? 1 : -1)).slice(0, 10);
  const list = $("#failures");
  list.replaceChildren();
  if (!failures.length) list.textContent = "no failure";
  for (const j of failures) {
    const item = document.createElement("div");
    item.className = "failure";
    item.dataset.job = j.job_id;
    const title = document.createElement("strong");
    title.textContent = `${j.test} on ${j.target} (${j.app_version_id}), ${j.attempts} attempt(s): ${j.error || j.status}`;
    const tail = document.createElement("pre");
    tail.textContent = j.log_tail || "(no output)";
    item.append(title, tail);
    list.append(item);
  }
}

function throttled(fn, ms) {
  let timer = null;
  return () => {
    if (timer) return;
    timer = setTimeout(async () => {
      timer = null;
      try { await fn(); } catch (err) { if (err instanceof AuthError) askForToken(err.message); }
    }, ms);
  };
}
const redrawJobs = throttled(renderJobs, 150);
const redrawAggregates = throttled(refreshAggregates, 1000);

// Reads /v1/stream until it breaks; resumes after the last id it saw.
async function follow() {
  let lastId = "";
  for (;;) {
    try {
      const headers = { authorization: `Bearer ${token}`, accept: "text/event-stream" };
      if (lastId) headers["last-event-id"] = lastId;
      const answer = await fetch("/v1/stream", { headers });
      if (answer.status === 401 || answer.status === 403) throw new AuthError((await answer.json()).message);
      if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
      setLive(true, "live");
      const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, cut);
          buffer = buffer.slice(cut + 2);
          let event = "message";
          const data = [];
          for (const line of block.split("\n")) {
            if (line.startsWith("event:")) event = line.slice(6).trim();
            else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            else if (line.startsWith("id:")) lastId = line.slice(3).trim();
          }
          if (event === "job" && data.length) {
            const job = JSON.parse(data.join("\n"));
            jobs.set(job.job_id, job);
            redrawJobs();
            redrawAggregates();
          } else if (event === "caught-up") {
            renderJobs();
            redrawAggregates();
          }
        }
      }
    } catch (err) {
      if (err instanceof AuthError) return askForToken(`${err.message}: the token is missing or not valid. Paste a qgjob token (qgjob up prints one).`);
    }
    setLive(false, "reconnecting…");
    await new Promise((r) => setTimeout(r, 1000));
  }
}

async function start() {
  token = readToken();
  if (!token) return askForToken("No token: paste a qgjob token (qgjob up prints one; qgjob token create --org-id ORG makes one).");
  try {
    await refreshAggregates();
  } catch (err) {
    if (err instanceof AuthError) {
      sessionStorage.removeItem("qgjob-token");
      return askForToken(`${err.message}: the token is missing or not valid. Paste a qgjob token (qgjob up prints one).`);
    }
    showMessage(`The qgjob API does not answer: ${err.message}`);
  }
  $("#login").hidden = true;
  $("#logout").hidden = false;
  $("#board").hidden = false;
  showMessage("");
  renderJobs();
  follow();
}

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem("qgjob-token", $("#token").value.trim());
  start();
});
$("#logout").addEventListener("click", () => {
  sessionStorage.removeItem("qgjob-token");
  location.reload();
});
start();
