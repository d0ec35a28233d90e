// modelship's dashboard: three pages (deployments, a deployment, pipeline
// runs) over the control plane's own API. Pages update from a server-sent
// event stream (`/v1/watch`), one event per sampler tick; actions call the
// same routes the CLI does. No framework: `h` builds elements (text is
// always set as text, never parsed as HTML), each section is rebuilt only
// when its data changed, and uPlot draws the time series.
"use strict";

const HOUR_S = 3600;

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const fmt = {
  num(v, digits = 1) {
    return v === null || v === undefined || !isFinite(v) ? "–" : Number(v).toFixed(digits);
  },
  ms(v) {
    return v === null || v === undefined ? "–" : v < 10 ? v.toFixed(2) + " ms" : v.toFixed(0) + " ms";
  },
  pct(v) {
    return v === null || v === undefined ? "–" : (100 * v).toFixed(v && v < 0.01 ? 2 : 1) + "%";
  },
  bytes(b) {
    if (b === null || b === undefined) return "–";
    const mib = b / 1048576;
    return mib >= 1024 ? (mib / 1024).toFixed(2) + " GiB" : mib.toFixed(mib < 10 ? 2 : 0) + " MiB";
  },
  time(ms) {
    return ms ? new Date(ms).toLocaleTimeString([], { hour12: false }) : "–";
  },
  when(ms) {
    if (!ms) return "–";
    const d = new Date(ms);
    return d.toLocaleDateString([], { month: "short", day: "numeric" }) + " " + fmt.time(ms);
  },
  span(ms) {
    if (ms === null || ms === undefined) return "–";
    if (ms < 1000) return ms + " ms";
    if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
    return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
  },
  digest(d) {
    return d ? d.replace(/^sha256:/, "").slice(0, 12) : "–";
  },
  base(path) {
    return (
      String(path || "")
        .split("/")
        .filter(Boolean)
        .pop() || "–"
    );
  },
};

// Log lines without their terminal colours (ANSI escape sequences).
function plain(text) {
  return String(text || "").replace(/\x1b\[[0-9;?]*[A-Za-z]/g, "");
}

function badge(text, kind) {
  return h("span", { class: "badge " + (kind || text) }, text);
}

// Rebuilds `slot`'s content with `render(data)` only when `data` changed, so
// that focus, selection and open <details> survive the ticks that change
// nothing there.
function patch(slot, data, render) {
  const key = JSON.stringify(data);
  if (slot.dataset.key === key) return;
  slot.dataset.key = key;
  const open = [...slot.querySelectorAll("details[open]")].map((d) => d.dataset.id);
  slot.replaceChildren(...[render(data)].flat().filter(Boolean));
  for (const id of open) {
    const d = slot.querySelector(`details[data-id="${CSS.escape(id || "")}"]`);
    if (d) d.open = true;
  }
}

// ------------------------------------------------------------------- API

const auth = {
  get key() {
    return sessionStorage.getItem("modelship.key") || "";
  },
  set key(k) {
    sessionStorage.setItem("modelship.key", k);
  },
  headers() {
    return this.key ? { Authorization: "Bearer " + this.key } : {};
  },
};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET", body } = {}) {
  for (;;) {
    const res = await fetch(path, {
      method,
      headers: { ...auth.headers(), ...(body ? { "content-type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    if (res.status === 401 && (await askKey())) continue;
    const text = await res.text();
    if (!res.ok) {
      let message = text;
      try {
        message = JSON.parse(text).error.message;
      } catch (_) {}
      throw new ApiError(res.status, message || res.statusText);
    }
    const type = res.headers.get("content-type") || "";
    return type.includes("json") ? JSON.parse(text) : text;
  }
}

// The key dialog; resolves true once a key is given.
function askKey() {
  const dialog = document.getElementById("key");
  const input = document.getElementById("key-input");
  if (dialog.open) return new Promise((r) => dialog.addEventListener("close", () => r(dialog.returnValue === "ok"), { once: true }));
  input.value = "";
  dialog.showModal();
  return new Promise((resolve) => {
    dialog.addEventListener(
      "close",
      () => {
        const ok = dialog.returnValue === "ok" && input.value.trim() !== "";
        if (ok) auth.key = input.value.trim();
        resolve(ok);
      },
      { once: true },
    );
  });
}

// Server-sent events read with fetch (EventSource cannot send the key).
// Calls `on(event, data)` per event; reconnects after a drop until `stop`.
function watch(path, on) {
  const state = { controller: null, stopped: false };
  const live = document.getElementById("live");
  const down = (why) => {
    live.textContent = why;
    live.className = "live down";
  };
  // A page's failure to show an event is a bug to see in the console, not
  // a reason to drop the stream.
  const deliver = (event, data) => {
    try {
      on(event, data);
    } catch (e) {
      console.error(e);
    }
  };
  const connect = async () => {
    while (!state.stopped) {
      state.controller = new AbortController();
      try {
        const res = await fetch(path, { headers: auth.headers(), signal: state.controller.signal });
        if (res.status === 401) {
          if (!(await askKey())) throw new ApiError(401, "an API key is needed");
          continue;
        }
        if (!res.ok) {
          let message = res.statusText;
          try {
            message = JSON.parse(await res.text()).error.message;
          } catch (_) {}
          // A refusal stands; a server's failure may pass: try again.
          if (res.status < 500) {
            down("stopped");
            deliver("error", message);
            return;
          }
          throw new Error(message);
        }
        live.textContent = "live";
        live.className = "live ok";
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let event = "message";
            const data = [];
            for (const line of block.split("\n")) {
              if (line.startsWith("event:")) event = line.slice(6).trim();
              else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
            }
            if (data.length === 0) continue; // a keep-alive comment
            const text = data.join("\n");
            if (event === "gone") {
              down("gone");
              deliver("gone", text);
              return;
            }
            deliver(event, JSON.parse(text));
          }
        }
      } catch (e) {
        if (state.stopped) return;
        if (e instanceof ApiError) {
          down("stopped");
          deliver("error", e.message);
          return;
        }
      }
      if (state.stopped) return;
      down("reconnecting…");
      await new Promise((r) => setTimeout(r, 2000));
    }
  };
  connect();
  return () => {
    state.stopped = true;
    if (state.controller) state.controller.abort();
  };
}

// Asks for confirmation in the dialog; `extra` adds fields, `action(form)`
// runs on confirm and may throw to keep the dialog open with its message.
function confirmAction({ title, text, ok = "Confirm", danger = false, extra = null, action }) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-title").textContent = title;
  document.getElementById("confirm-text").textContent = text;
  const err = document.getElementById("confirm-error");
  err.textContent = "";
  const slot = document.getElementById("confirm-extra");
  slot.replaceChildren(...(extra ? [extra] : []));
  const button = document.getElementById("confirm-ok");
  button.textContent = ok;
  button.className = danger ? "danger" : "";
  const form = dialog.querySelector("form");
  const submit = async (e) => {
    if (e.submitter && e.submitter.value !== "ok") return; // cancel closes
    e.preventDefault();
    button.disabled = true;
    try {
      await action(slot);
      dialog.close("ok");
      form.removeEventListener("submit", submit);
      refresh();
    } catch (error) {
      err.textContent = error.message;
    } finally {
      button.disabled = false;
    }
  };
  form.addEventListener("submit", submit);
  dialog.addEventListener("close", () => form.removeEventListener("submit", submit), { once: true });
  dialog.showModal();
  const first = slot.querySelector("input");
  (first || button).focus();
}

// ---------------------------------------------------------------- router

let page = { stop() {} };
let refresh = () => {};

function route() {
  page.stop();
  const main = document.getElementById("main");
  main.replaceChildren();
  const hash = location.hash.replace(/^#/, "") || "/";
  let m;
  let name = "deployments";
  if ((m = hash.match(/^\/d\/([^/]+)$/))) page = deploymentPage(main, decodeURIComponent(m[1]));
  else if ((m = hash.match(/^\/runs\/(\d+)$/))) {
    page = runPage(main, Number(m[1]));
    name = "runs";
  } else if (hash === "/runs") {
    page = runsPage(main);
    name = "runs";
  } else page = deploymentsPage(main);
  for (const a of document.querySelectorAll("[data-nav]")) {
    if (a.dataset.nav === name) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

// ------------------------------------------------------ deployments page

function deploymentsPage(main) {
  document.title = "Deployments · modelship";
  const table = h("div", { class: "scroll" });
  main.append(h("h1", {}, "Deployments"), h("section", { "aria-label": "Deployments" }, table));
  const stop = watch("/v1/watch", (event, data) => {
    if (event === "error") return patch(table, data, (m) => h("p", { class: "error" }, m));
    if (event !== "overview") return;
    patch(table, data.deployments, deploymentsTable);
  });
  refresh = () => {};
  return { stop };
}

function replicaCell(d) {
  const parts = [`${d.ready}/${d.replicas}`];
  if (d.pending) parts.push(`${d.pending} pending`);
  if (d.old) parts.push(`${d.old} old`);
  return parts.join(" · ");
}

function deploymentsTable(rows) {
  if (rows.length === 0) return h("p", { class: "empty" }, "No deployments yet: ", h("code", {}, "modelship deploy -f SPEC"));
  return h(
    "table",
    {},
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Name", "Model", "Precision", "Target", "Replicas", "Rollout"].map((c) => h("th", { scope: "col" }, c)),
        ["Req/s", "p50", "p99", "Errors"].map((c) => h("th", { scope: "col", class: "num" }, c)),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map(({ deployment: d, precision, point: p }) =>
        h(
          "tr",
          { "data-deployment": d.name },
          h("td", {}, h("a", { href: "#/d/" + encodeURIComponent(d.name) }, d.name)),
          h("td", { title: d.model }, fmt.base(d.model)),
          h("td", {}, precision || "–"),
          h("td", {}, d.target),
          h("td", { "data-field": "replicas", "data-ready": d.ready, "data-desired": d.replicas }, replicaCell(d)),
          h("td", {}, badge(d.phase.phase), d.traffic !== null && d.traffic !== undefined ? ` ${d.traffic}%` : ""),
          h("td", { class: "num", "data-field": "rps" }, fmt.num(p && p.requests_per_s)),
          h("td", { class: "num" }, fmt.ms(p && p.p50_ms)),
          h("td", { class: "num" }, fmt.ms(p && p.p99_ms)),
          h("td", { class: "num" }, p ? fmt.pct(p.error_rate) : "–"),
        ),
      ),
    ),
  );
}

// ------------------------------------------------------- deployment page

const CHARTS = [
  { id: "rps", title: "Requests/s", series: [{ label: "req/s", key: "requests_per_s", stroke: "#1f5fbf" }] },
  {
    id: "latency",
    title: "Latency at the gateway (ms)",
    series: [
      { label: "p50", key: "p50_ms", stroke: "#1b7f3b" },
      { label: "p99", key: "p99_ms", stroke: "#b3261e" },
    ],
  },
  { id: "tokens", title: "Tokens/s generated", series: [{ label: "tokens/s", key: "tokens_per_s", stroke: "#6a3fb5" }] },
  { id: "queue", title: "Queue depth", series: [{ label: "queued", key: "queue", stroke: "#a15c00" }] },
  {
    id: "replicas",
    title: "Replicas",
    series: [
      { label: "ready (all revisions)", key: "ready", stroke: "#1b7f3b" },
      { label: "desired", key: "desired", stroke: "#5b6472", dash: [5, 4] },
    ],
  },
];

function deploymentPage(main, name) {
  document.title = name + " · modelship";
  const slots = {};
  const slot = (id, tag = "div", attrs = {}) => (slots[id] = h(tag, attrs));
  main.append(
    h("h1", {}, name, slot("phase", "span")),
    slot("actions", "div", { class: "actions", role: "toolbar", "aria-label": "Actions" }),
    slot("facts", "div", { class: "facts" }),
    slot("error", "p", { class: "error", role: "alert" }),
    slot("history", "p", { class: "error", role: "alert" }),
    slot("rollout"),
    h("section", { "aria-label": "Live figures" }, h("h2", {}, "Last hour"), slot("charts", "div", { class: "charts" })),
    h(
      "div",
      { class: "grid2" },
      h("section", {}, h("h2", {}, "Revisions"), slot("revisions", "div", { class: "scroll" })),
      h("section", {}, h("h2", {}, "Replicas"), slot("replicas", "div", { class: "scroll" })),
    ),
    h(
      "div",
      { class: "grid2" },
      h("section", {}, h("h2", {}, "Events"), slot("events")),
      h(
        "section",
        {},
        h("h2", {}, "Logs ", h("button", { type: "button", class: "quiet", id: "logs-refresh", onclick: () => loadLogs() }, "Refresh")),
        slot("logs", "pre", { class: "logs", tabindex: "0", "aria-label": "Log tail" }),
      ),
    ),
  );
  const charts = makeCharts(slots.charts);
  let latest = null;
  // Points streamed before the history arrived wait for it.
  let early = [];
  const loadLogs = () =>
    api(`/v1/deployments/${encodeURIComponent(name)}/logs?tail=80`)
      .then((t) => (slots.logs.textContent = plain(t) || "(no output yet)"))
      .catch((e) => (slots.logs.textContent = e.message));
  api(`/v1/deployments/${encodeURIComponent(name)}/metrics`)
    .then((m) => m.points)
    .catch((e) => {
      slots.history.textContent = "cannot read the last hour's figures: " + e.message;
      return [];
    })
    .then((points) => {
      charts.load(points.concat(early));
      early = null;
    });
  loadLogs();
  const stop = watch("/v1/watch?deployment=" + encodeURIComponent(name), (event, data) => {
    if (event === "gone" || event === "error") {
      slots.error.textContent = typeof data === "string" ? data : "gone";
      return;
    }
    if (event !== "detail") return;
    latest = data;
    slots.error.textContent = "";
    const d = data.deployment;
    patch(slots.phase, d.phase.phase, (p) => badge(p));
    patch(slots.actions, [d.revision, d.replicas, data.can], () => actions(name, data));
    patch(slots.facts, [d, data.point], () => facts(data));
    patch(slots.rollout, [d.phase, data.analysis, data.rollout], () => rolloutPanel(data));
    patch(slots.revisions, data.revisions, (r) => revisionsTable(name, r));
    patch(slots.replicas, data.replicas, replicasTable);
    patch(slots.events, data.events, eventsList);
    if (data.point) {
      if (early) early.push(data.point);
      else charts.push(data.point);
    }
  });
  refresh = () => {};
  return {
    stop() {
      stop();
      charts.destroy();
    },
    latest: () => latest,
  };
}

function fact(k, v, attrs = {}) {
  return h("div", { class: "fact", ...attrs }, h("div", { class: "k" }, k), h("div", { class: "v" }, v));
}

function facts(data) {
  const d = data.deployment;
  const p = data.point;
  const serving = data.revisions.find((r) => r.serving);
  return [
    fact("Revision", d.revision),
    fact("Model", fmt.base(d.model), { title: d.model }),
    fact("Precision", (serving && serving.precision) || "–"),
    fact("Target", d.target + (d.image ? " · " + d.image : "")),
    fact("Ready / desired", `${d.ready} / ${d.replicas}`, { "data-field": "replicas", "data-ready": d.ready, "data-desired": d.replicas }),
    fact("Requests/s", fmt.num(p && p.requests_per_s)),
    fact("p50 · p99", `${fmt.ms(p && p.p50_ms)} · ${fmt.ms(p && p.p99_ms)}`),
    fact("Errors", p ? fmt.pct(p.error_rate) : "–"),
  ];
}

function actions(name, data) {
  const d = data.deployment;
  const phase = d.phase.phase;
  const path = (what) => `/v1/deployments/${encodeURIComponent(name)}/${what}`;
  const buttons = [
    h(
      "button",
      {
        type: "button",
        id: "scale",
        onclick: () => {
          const input = h("input", { type: "number", min: "0", max: "10000", value: d.replicas, id: "scale-input", required: true });
          confirmAction({
            title: `Scale ${name}`,
            text: `Set the replica count (now ${d.replicas}).`,
            ok: "Scale",
            extra: h("label", {}, "Replicas ", input),
            action: () => {
              const n = Number(input.value);
              if (!Number.isInteger(n) || n < 0) throw new Error("a whole number of replicas, 0 or more");
              return api(path("scale"), { method: "POST", body: { replicas: n } });
            },
          });
        },
      },
      "Scale…",
    ),
  ];
  const can = data.can || {};
  if (phase !== "steady") {
    if (can.promote)
      buttons.push(
        h(
          "button",
          {
            type: "button",
            id: "promote",
            onclick: () =>
              confirmAction({
                title: `Promote revision ${d.revision}`,
                text: "Go on to the next step now, without waiting for this one's analysis.",
                ok: "Promote",
                action: () => api(path("promote"), { method: "POST", body: { revision: d.revision } }),
              }),
          },
          "Promote",
        ),
      );
    if (can.abort)
      buttons.push(
        h(
          "button",
          {
            type: "button",
            id: "abort",
            class: "danger",
            onclick: () =>
              confirmAction({
                title: `Abort the rollout of revision ${d.revision}`,
                text: can.abort_removes
                  ? "The rollout fails and, as nothing served before it, the deployment is removed."
                  : "The rollout fails and the revision that served before serves again.",
                ok: "Abort",
                danger: true,
                action: () => api(path("abort"), { method: "POST", body: { revision: d.revision } }),
              }),
          },
          "Abort rollout",
        ),
      );
  }
  buttons.push(
    h(
      "button",
      {
        type: "button",
        id: "delete",
        class: "danger",
        onclick: () =>
          confirmAction({
            title: `Delete ${name}`,
            text: "Its replicas stop and the deployment is forgotten (its history stays).",
            ok: "Delete",
            danger: true,
            action: async () => {
              await api(`/v1/deployments/${encodeURIComponent(name)}`, { method: "DELETE" });
              location.hash = "#/";
            },
          }),
      },
      "Delete…",
    ),
  );
  return buttons;
}

function rolloutPanel(data) {
  const d = data.deployment;
  const ph = d.phase;
  if (ph.phase === "steady") return null;
  const rollout = data.rollout || {};
  const lines = [];
  if (ph.phase === "canary") {
    const steps = (rollout.canary && rollout.canary.steps) || [];
    lines.push(
      h(
        "p",
        {},
        `Canary step ${ph.step + 1} of ${steps.length}: revision ${d.revision} takes ${d.traffic}% of traffic beside revision ${ph.stable}. `,
        ph.analysis_from ? `Analysis since ${fmt.time(ph.analysis_from)}.` : "Waiting for its replicas to be ready.",
      ),
      h("p", { class: "muted" }, "Steps: ", steps.map((s, i) => (i === ph.step ? `[${s}%]` : `${s}%`)).join(" → ")),
    );
  } else if (ph.phase === "shadow") {
    lines.push(h("p", {}, `Shadow: revision ${ph.stable} answers every client while requests are mirrored to revision ${d.revision}.`));
  } else if (ph.phase === "blue-green") {
    lines.push(
      h(
        "p",
        {},
        ph.switched_at
          ? `Switched to revision ${d.revision} at ${fmt.time(ph.switched_at)}; revision ${ph.stable} stays for an instant rollback.`
          : `Revision ${d.revision} is starting beside revision ${ph.stable}.`,
      ),
    );
  } else {
    lines.push(h("p", {}, `Rolling update to revision ${d.revision}.`));
  }
  const a = data.analysis;
  if (a) {
    const w = (x) => `${x.requests} requests, ${x.errors} errors, p99 ${fmt.ms(x.p99_ms)}`;
    lines.push(
      h("p", {}, h("strong", {}, `Revision ${d.revision}: `), w(a.canary), " — ", h("strong", {}, `revision ${ph.stable}: `), w(a.stable)),
    );
    const q = a.live;
    if (q && q.samples + q.failed > 0) {
      const parts = [`${q.samples} compared`, `${q.failed} failed`];
      if (q.cosine) parts.push(`cosine mean ${fmt.num(q.cosine.mean, 5)} (p1 ${fmt.num(q.cosine.p1, 4)})`);
      if (q.top1 !== undefined) parts.push(`top-1 ${fmt.pct(q.top1)} over ${q.tokens} tokens`);
      if (q.kld !== undefined) parts.push(`KLD ${fmt.num(q.kld, 4)}`);
      if (q.exact_match) parts.push(`exact match ${fmt.pct(q.exact_match[0])} of ${q.exact_match[1]}`);
      if (q.spearman !== undefined) parts.push(`Spearman ${fmt.num(q.spearman, 4)}`);
      if (q.label_agreement !== undefined) parts.push(`labels ${fmt.pct(q.label_agreement)}`);
      lines.push(h("p", { "data-field": "live-quality" }, h("strong", {}, "Live quality: "), parts.join(" · ")));
    }
  }
  const record = (ph.progress && ph.progress.record) || [];
  if (record.length)
    lines.push(
      h(
        "ul",
        { class: "record" },
        record.map((r) => h("li", {}, r)),
      ),
    );
  return h("section", { "aria-label": "Rollout" }, h("h2", {}, "Rollout in progress"), lines);
}

function revisionsTable(name, revisions) {
  const rows = [...revisions].reverse();
  return h(
    "table",
    {},
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Rev", "Cause", "Precision", "Created", "Traffic", "Replicas", ""].map((c) => h("th", { scope: "col" }, c)),
      ),
    ),
    h(
      "tbody",
      {},
      rows.map((r) =>
        h(
          "tr",
          { "data-revision": r.revision },
          h("td", {}, r.revision, r.serving ? " " : "", r.serving ? badge("serving", "ok") : ""),
          h("td", {}, r.cause),
          h("td", {}, r.precision || "–"),
          h("td", {}, fmt.when(r.created_at)),
          h("td", { class: "num" }, r.share + "%"),
          h("td", {}, r.replicas ? `${r.ready}/${r.replicas}` : "–"),
          h(
            "td",
            {},
            r.serving
              ? ""
              : h(
                  "button",
                  {
                    type: "button",
                    class: "quiet",
                    "data-rollback": r.revision,
                    onclick: () =>
                      confirmAction({
                        title: `Roll ${name} back to revision ${r.revision}`,
                        text: `Revision ${r.revision}'s model and spec serve again, as a new revision.`,
                        ok: "Roll back",
                        action: () =>
                          api(`/v1/deployments/${encodeURIComponent(name)}/rollback`, { method: "POST", body: { to: r.revision } }),
                      }),
                  },
                  "Roll back",
                ),
          ),
        ),
      ),
    ),
  );
}

function replicasTable(replicas) {
  if (replicas.length === 0) return h("p", { class: "muted" }, "No replicas.");
  return h(
    "table",
    {},
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Replica", "Rev", "State", "Endpoint", "Restarts", "Memory", "Started"].map((c) => h("th", { scope: "col" }, c)),
      ),
    ),
    h(
      "tbody",
      {},
      replicas.map((r) =>
        h(
          "tr",
          { "data-replica": r.id, "data-state": r.state },
          h("td", { class: "mono" }, r.id),
          h("td", {}, r.revision),
          h("td", { title: r.reason || "" }, badge(r.state)),
          h("td", { class: "mono" }, r.endpoint || "–"),
          h("td", { class: "num" }, r.restarts),
          h("td", { class: "num" }, fmt.bytes(r.resident_bytes)),
          h("td", {}, fmt.time(r.started_at)),
        ),
      ),
    ),
  );
}

function eventsList(events) {
  if (events.length === 0) return h("p", { class: "muted" }, "Nothing yet.");
  return h(
    "ol",
    { class: "events" },
    [...events].reverse().map((e) => h("li", {}, h("time", { datetime: new Date(e.at).toISOString() }, fmt.time(e.at)), e.message)),
  );
}

// One uPlot per figure; data as columns (time in seconds first).
function makeCharts(container) {
  const made = CHARTS.map((c) => {
    const fig = h("figure", { "data-chart": c.id, "data-points": 0 }, h("figcaption", {}, c.title));
    container.append(fig);
    return { spec: c, fig, plot: null, data: [[], ...c.series.map(() => [])] };
  });
  const width = (fig) => Math.max(260, fig.clientWidth - 16);
  const draw = (m) => {
    if (typeof uPlot === "undefined") return;
    if (!m.plot) {
      m.plot = new uPlot(
        {
          width: width(m.fig),
          height: 180,
          scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max * 1.1, 1)] } },
          series: [{}, ...m.spec.series.map((s) => ({ label: s.label, stroke: s.stroke, width: 1.5, dash: s.dash, spanGaps: false }))],
          axes: [{}, { size: 50 }],
          legend: { live: true },
        },
        m.data,
        m.fig,
      );
    } else m.plot.setData(m.data);
    const xs = m.data[0];
    m.fig.dataset.points = xs.length;
    const last = m.data[1][xs.length - 1];
    m.fig.dataset.last = last === null || last === undefined ? "" : last;
    m.fig.dataset.max = Math.max(0, ...m.data[1].filter((v) => v !== null && v !== undefined));
  };
  const add = (p) => {
    const t = p.at / 1000;
    for (const m of made) {
      const xs = m.data[0];
      if (xs.length && t <= xs[xs.length - 1]) continue;
      xs.push(t);
      m.spec.series.forEach((s, i) => m.data[i + 1].push(p[s.key] === undefined ? null : p[s.key]));
      while (xs.length && xs[0] < t - HOUR_S) m.data.forEach((col) => col.shift());
    }
  };
  const onResize = () => made.forEach((m) => m.plot && m.plot.setSize({ width: width(m.fig), height: 180 }));
  window.addEventListener("resize", onResize);
  return {
    load(points) {
      points.forEach(add);
      made.forEach(draw);
    },
    push(p) {
      add(p);
      made.forEach(draw);
    },
    destroy() {
      window.removeEventListener("resize", onResize);
      made.forEach((m) => m.plot && m.plot.destroy());
    },
  };
}

// --------------------------------------------------------- runs pages

function runsPage(main) {
  document.title = "Pipeline runs · modelship";
  const table = h("div", { class: "scroll" });
  main.append(h("h1", {}, "Pipeline runs"), h("section", { "aria-label": "Runs" }, table));
  const stop = watch("/v1/watch", (event, data) => {
    if (event === "overview") patch(table, data.runs, runsTable);
  });
  refresh = () => {};
  return { stop };
}

function runsTable(runs) {
  if (runs.length === 0) return h("p", { class: "empty" }, "No runs yet.");
  return h(
    "table",
    {},
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Run", "Deployment", "Revision", "Status", "Stage", "Started", "Took", "Error"].map((c) => h("th", { scope: "col" }, c)),
      ),
    ),
    h(
      "tbody",
      {},
      runs.map((r) =>
        h(
          "tr",
          { "data-run": r.id },
          h("td", {}, h("a", { href: "#/runs/" + r.id }, "#" + r.id)),
          h("td", {}, h("a", { href: "#/d/" + encodeURIComponent(r.deployment) }, r.deployment)),
          h("td", {}, r.revision || "–"),
          h("td", {}, badge(r.status)),
          h("td", {}, r.stage || "–"),
          h("td", {}, fmt.when(r.started_at)),
          h("td", { class: "num" }, r.finished_at ? fmt.span(r.finished_at - r.started_at) : "…"),
          h("td", { class: "error", title: r.error || "" }, r.error ? r.error.split("\n")[0].slice(0, 90) : ""),
        ),
      ),
    ),
  );
}

function runPage(main, id) {
  document.title = `Run ${id} · modelship`;
  const head = h("div");
  const body = h("div");
  main.append(h("h1", {}, `Run #${id}`, head), body);
  let seen = null;
  const load = () =>
    api(`/v1/runs/${id}`)
      .then((run) => {
        patch(head, [run.status, run.deployment], () => [
          badge(run.status),
          h("a", { href: "#/d/" + encodeURIComponent(run.deployment) }, run.deployment),
        ]);
        patch(body, run, runDetail);
      })
      .catch((e) => body.replaceChildren(h("p", { class: "error" }, e.message)));
  load();
  // Fetched again when the overview shows the run moved on.
  const stop = watch("/v1/watch", (event, data) => {
    if (event !== "overview") return;
    const r = data.runs.find((x) => x.id === id);
    const key = r ? r.status + r.stage : null;
    if (seen !== null && key !== seen) load();
    seen = key;
  });
  refresh = load;
  return { stop };
}

function runDetail(run) {
  const total = run.stages.reduce((s, st) => s + (st.duration_ms || 0), 0) || 1;
  const parts = [];
  parts.push(
    h(
      "section",
      { "aria-label": "Stage timeline" },
      h("h2", {}, "Stages"),
      h(
        "p",
        { class: "muted" },
        `Started ${fmt.when(run.started_at)}`,
        run.finished_at ? `, took ${fmt.span(run.finished_at - run.started_at)}` : ", running",
        run.attempt > 1 ? ` (attempt ${run.attempt})` : "",
      ),
      run.error ? h("p", { class: "error" }, run.error.split("\n")[0]) : null,
      h(
        "div",
        { class: "timeline", role: "img", "aria-label": "Stage durations" },
        run.stages.map((st) => {
          const bar = h(
            "div",
            { class: st.status, title: `${st.name}: ${fmt.span(st.duration_ms)}`, "data-stage": st.name },
            `${st.name} ${fmt.span(st.duration_ms)}`,
          );
          // Its share of the run's time (CSSOM: the page's policy allows no
          // style attributes).
          bar.style.flexGrow = Math.max(st.duration_ms || 0, total / 50);
          return bar;
        }),
      ),
      h(
        "div",
        { class: "scroll" },
        h(
          "table",
          {},
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Stage", "Status", "Took", "Inputs", "Outputs", "Result"].map((c) => h("th", { scope: "col" }, c)),
            ),
          ),
          h(
            "tbody",
            {},
            run.stages.map((st) =>
              h(
                "tr",
                {},
                h("td", {}, st.name),
                h("td", {}, badge(st.status)),
                h("td", { class: "num" }, fmt.span(st.duration_ms)),
                h("td", { class: "mono", title: st.inputs_digest }, fmt.digest(st.inputs_digest)),
                h("td", { class: "mono", title: st.outputs_digest || "" }, fmt.digest(st.outputs_digest)),
                h(
                  "td",
                  {},
                  st.detail.includes("\n")
                    ? h("details", { "data-id": st.name }, h("summary", {}, st.detail.split("\n")[0]), h("pre", {}, st.detail))
                    : st.detail,
                ),
              ),
            ),
          ),
        ),
      ),
    ),
  );
  const tradeoff = run.stages.map((s) => s.tradeoff).find(Boolean);
  if (tradeoff)
    parts.push(
      h("section", { "aria-label": "Size against quality" }, h("h2", {}, "Optimize: size against quality"), tradeoffChart(tradeoff)),
    );
  return parts;
}

// The candidates as points of file size against the gated figure, the gate's
// bound as a dashed line, the chosen one ringed.
function tradeoffChart(t) {
  const W = 720,
    H = 320,
    L = 70,
    R = 20,
    T = 20,
    B = 50;
  const pts = t.candidates.filter((c) => typeof c.value === "number" && isFinite(c.value));
  const mib = pts.map((c) => c.file_bytes / 1048576);
  const vals = pts.map((c) => c.value);
  if (t.threshold !== null && t.threshold !== undefined) vals.push(t.threshold);
  let [xmin, xmax] = [0, Math.max(...mib, 1) * 1.08];
  let [ymin, ymax] = [Math.min(...vals), Math.max(...vals)];
  const pad = (ymax - ymin || Math.abs(ymax) || 1) * 0.15;
  ymin -= pad;
  ymax += pad;
  const x = (v) => L + ((v - xmin) / (xmax - xmin)) * (W - L - R);
  const y = (v) => T + (1 - (v - ymin) / (ymax - ymin)) * (H - T - B);
  // Round ticks: steps of 1, 2 or 5 times a power of ten, about n of them.
  const step = (lo, hi, n) => {
    const raw = (hi - lo) / n;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  };
  const ticks = (lo, hi, n) => {
    const s = step(lo, hi, n);
    const out = [];
    for (let v = Math.ceil(lo / s) * s; v <= hi + s * 1e-9; v += s) out.push(v);
    return out;
  };
  const digits = Math.max(0, Math.min(6, -Math.floor(Math.log10(step(ymin, ymax, 4)))));
  const els = [
    svg("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }),
    svg("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }),
    ...ticks(xmin, xmax, 5).map((v) => svg("text", { x: x(v), y: H - B + 16, "text-anchor": "middle" }, +v.toFixed(2))),
    ...ticks(ymin, ymax, 4).map((v) => svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v.toFixed(digits))),
    svg("text", { x: (L + W - R) / 2, y: H - 10, "text-anchor": "middle" }, "file size (MiB)"),
    svg(
      "text",
      { x: 14, y: (T + H - B) / 2, transform: `rotate(-90 14 ${(T + H - B) / 2})`, "text-anchor": "middle" },
      `${t.metric} (${t.higher_is_better ? "higher" : "lower"} is better)`,
    ),
  ];
  if (t.threshold !== null && t.threshold !== undefined)
    els.push(
      svg("line", { class: "gate", x1: L, y1: y(t.threshold), x2: W - R, y2: y(t.threshold), "data-gate": t.threshold }),
      svg(
        "text",
        { x: W - R - 4, y: y(t.threshold) - 6, "text-anchor": "end", fill: "#b3261e" },
        `gate ${t.higher_is_better ? "≥" : "≤"} ${t.threshold}`,
      ),
    );
  // Labels that would overlap one placed before move down a line.
  const placed = [];
  const labelAt = (cx, cy, text) => {
    let ly = cy - 8;
    const w = 7 * text.length;
    while (placed.some((p) => Math.abs(p.x - cx) < Math.max(p.w, w) && Math.abs(p.y - ly) < 14)) ly += 14;
    placed.push({ x: cx, y: ly, w });
    return ly;
  };
  pts.forEach((c, i) => {
    const cx = x(mib[i]),
      cy = y(c.value);
    const pass = c.violations.length === 0;
    els.push(
      svg(
        "circle",
        { class: pass ? "pass" : "fail", cx, cy, r: 5, "data-precision": c.precision },
        svg(
          "title",
          {},
          `${c.precision}: ${fmt.bytes(c.file_bytes)}, ${c.bits_per_weight.toFixed(2)} bits/weight, ${t.metric} ${c.value}${pass ? "" : " — " + c.violations.join(", ")}`,
        ),
      ),
      svg(
        "text",
        { x: cx + 8, y: labelAt(cx, cy, c.precision + (c.chosen ? " (chosen)" : "")) },
        c.precision + (c.chosen ? " (chosen)" : ""),
      ),
    );
    if (c.chosen) els.push(svg("circle", { class: "chosen", cx, cy, r: 10, "data-chosen": c.precision }));
  });
  const chart = svg(
    "svg",
    { class: "tradeoff", viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": `${t.metric} against file size` },
    els,
  );
  const table = h(
    "table",
    {},
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Precision", "Size", "Bits/weight", t.metric, "Verdict"].map((c, i) =>
          h("th", { scope: "col", class: i && i < 4 ? "num" : null }, c),
        ),
      ),
    ),
    h(
      "tbody",
      {},
      t.candidates.map((c) =>
        h(
          "tr",
          {},
          h("td", {}, c.precision),
          h("td", { class: "num" }, fmt.bytes(c.file_bytes)),
          h("td", { class: "num" }, c.bits_per_weight.toFixed(2)),
          h("td", { class: "num" }, fmt.num(c.value, 5)),
          h(
            "td",
            {},
            c.chosen ? badge("chosen", "ok") : c.violations.length ? h("span", { class: "error" }, c.violations.join(", ")) : "passes",
          ),
        ),
      ),
    ),
  );
  return [chart, h("div", { class: "scroll" }, table)];
}

// ------------------------------------------------------------------ start

function start() {
  document.getElementById("key-button").addEventListener("click", () => askKey().then((ok) => ok && route()));
  window.addEventListener("hashchange", route);
  route();
}

start();
