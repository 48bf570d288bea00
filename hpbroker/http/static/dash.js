// The dashboard: reads /api/* every second (charts, overview, topics) or two (groups, replication,
// processes, logs); the configuration once.  Plain DOM, no framework.
"use strict";
const $ = id => document.getElementById(id);
const get = path => fetch(path, {cache: "no-store"}).then(r => r.json());
const esc = s => String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"})[c]);
const bytes = n => n == null ? "-" : n >= 1 << 30 ? (n / (1 << 30)).toFixed(1) + " GiB" :
  n >= 1 << 20 ? (n / (1 << 20)).toFixed(1) + " MiB" : n >= 1024 ? (n / 1024).toFixed(1) + " KiB" : n + " B";
const dur = s => s >= 86400 ? Math.floor(s / 86400) + "d " + Math.floor(s % 86400 / 3600) + "h" :
  s >= 3600 ? Math.floor(s / 3600) + "h " + Math.floor(s % 3600 / 60) + "m" :
  s >= 60 ? Math.floor(s / 60) + "m " + Math.floor(s % 60) + "s" : s.toFixed(0) + "s";

function rows(tbody, list, cells) {
  tbody.innerHTML = list.map(r => "<tr>" + cells(r).map(c => "<td>" + c + "</td>").join("") + "</tr>").join("");
}

async function overview() {
  const o = await get("/api/overview");
  $("instance").textContent = o.instance;
  $("role").textContent = o.role || "?";
  $("epoch").textContent = o.leader_epoch;
  $("ids").textContent = o.broker_id + " / " + o.cluster_id;
  $("uptime").textContent = dur(o.uptime_s);
  $("version").textContent = o.version;
  $("data-dir").textContent = o.data_dir;
  $("disk-free").textContent = o.disk_total_bytes ? bytes(o.disk_free_bytes) + " of " + bytes(o.disk_total_bytes) : "-";
  $("topic-count").textContent = o.topics + " / " + o.partitions;
  $("messages-in").textContent = o.messages_in.toLocaleString();
  const r = $("ready");
  r.textContent = o.ready ? "ready" : "not ready";
  r.className = "badge " + (o.ready ? "ok" : "bad");
  r.title = Object.entries(o.checks).map(([k, v]) => k + ": " + v).join("\n");
}

async function history() {
  const h = await get("/api/history");
  const col = k => h.map(s => s[k]);
  lineChart($("chart-produce"), [{label: "msg/s", color: "#2f6fdf", values: col("produce_msgs")},
                                 {label: "requests/s", color: "#e07a1f", values: col("produce_requests")}]);
  lineChart($("chart-fetch"), [{label: "msg/s", color: "#2f6fdf", values: col("fetch_msgs")},
                               {label: "requests/s", color: "#e07a1f", values: col("fetch_requests")}]);
  lineChart($("chart-latency"), [{label: "p50 ms", color: "#2f6fdf", values: col("ack_p50_ms")},
                                 {label: "p99 ms", color: "#7a4fd0", values: col("ack_p99_ms")}], {unit: ""});
  const last = h[h.length - 1];
  if (last) {
    $("now-produce").textContent = fmt(last.produce_msgs) + " msg/s, " + bytes(last.produce_bytes) + "/s";
    $("now-fetch").textContent = fmt(last.fetch_msgs) + " msg/s, " + bytes(last.fetch_bytes) + "/s";
    $("now-latency").textContent = last.ack_p50_ms == null ? "idle" :
      "p50 " + last.ack_p50_ms.toFixed(2) + " ms, p99 " + last.ack_p99_ms.toFixed(2) + " ms";
  }
}

async function topics() {
  const t = await get("/api/topics");
  rows($("topics-table").tBodies[0], t, r => [esc(r.topic), r.partition, r.log_start, r.log_end, bytes(r.size_bytes),
                                              fmt(r.in_per_s), bytes(r.bytes_in_per_s) + "/s", fmt(r.out_per_s)]);
}

async function groups() {
  const g = await get("/api/groups");
  rows($("groups-table").tBodies[0], g, r => [
    esc(r.group), esc(r.state),
    r.members.length ? r.members.map(m => esc(m.member_id.slice(0, 12)) + " @" + esc(m.client_host)).join("<br>") : r.member_count,
    r.members.map(m => m.assignment.map(a => esc(a[0]) + "/" + a[1]).join(" ")).join("<br>"),
    r.lag == null ? "-" : r.lag.toLocaleString()]);
}

async function replication() {
  const r = await get("/api/replication");
  rows($("replication").tBodies[0], Object.entries(r).sort(), ([k, v]) => [esc(k), esc(v)]);
}

async function processes() {
  const p = await get("/api/processes");
  rows($("processes").tBodies[0], p, r => [esc(r.process), r.pid, r.cpu_seconds, bytes(r.rss_bytes),
                                           r.heartbeat_age_s == null ? "-" : r.heartbeat_age_s.toFixed(1) + " s"]);
}

async function logs() {
  const l = await get("/api/logs?limit=80");
  const pre = $("logs");
  const atEnd = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
  pre.innerHTML = l.map(x => '<span class="lvl' + x.level + '">' + new Date(x.time * 1000).toISOString().slice(11, 23) +
    " " + esc(x.process) + " " + esc(x.text) + "</span>").join("\n");
  if (atEnd) pre.scrollTop = pre.scrollHeight;
}

async function config() {
  const c = await get("/api/config");
  $("config").innerHTML = Object.entries(c).map(([sec, keys]) =>
    "<details><summary>[" + esc(sec) + "]</summary><table class='kv'><tbody>" +
    Object.entries(keys).map(([k, v]) => "<tr><td>" + esc(k) + "</td><td>" + esc(JSON.stringify(v)) + "</td></tr>").join("") +
    "</tbody></table></details>").join("");
}

function every(ms, ...fns) {
  const run = () => Promise.all(fns.map(f => f().catch(e => console.warn(f.name, e)))).finally(() => setTimeout(run, ms));
  run();
}
config().catch(e => console.warn("config", e));
every(1000, overview, history, topics);
every(2000, groups, replication, processes, logs);
