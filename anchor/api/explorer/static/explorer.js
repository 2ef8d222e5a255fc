// cityanchor proof explorer: the page. Fetches a receipt and the keys, shows them, and runs the
// checks of verify.js; explain.js words them. Every device-supplied string reaches the DOM as
// text (textContent / text nodes), never as HTML. Keys and the chain endpoint the user gives are
// kept in localStorage, never sent to the server.

import {
  CHECK_NAMES, VerifyError, bytesToHex, parseCheckpoint, parseReceipt, parseVkey, parseWitnessVkey,
  verifyReceipt,
} from "./verify.js";
import { explain, trustLines, verdict } from "./explain.js";

const $ = (id) => document.getElementById(id);
let configPromise = null;

/** el("li", {class: "x", "data-check": "y"}, "text", child...) with text children as text nodes. */
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  for (const c of children) node.append(c instanceof Node ? c : String(c ?? ""));
  return node;
}

function definitions(dl, rows) {
  dl.replaceChildren();
  for (const [term, value, cls] of rows) {
    dl.append(el("dt", {}, term), el("dd", cls ? { class: cls } : {}, value));
  }
}

function setStatus(text, state) {
  $("status").textContent = text;
  $("result").dataset.state = state;
}

async function getJson(url) {
  const resp = await fetch(url, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await resp.json(); } catch { /* not JSON */ }
  return { ok: resp.ok, status: resp.status, body };
}

function loadConfig() {
  configPromise ??= getJson("/explorer/config.json")
    .then((r) => (r.ok && r.body ? r.body : { chains: [], operator_vkeys: [] }))
    .catch(() => ({ chains: [], operator_vkeys: [] }));
  return configPromise;
}

// ---- keys ---------------------------------------------------------------------------------

function jwksOf(value) {
  // A JWK, a list of JWKs or of key records, or a device document with a keys list: accept the
  // shapes a registry may use (public_jwk, public_key_jwk, jwk).
  if (!value || typeof value !== "object") return [];
  if (Array.isArray(value)) return value.flatMap(jwksOf);
  if (typeof value.kty === "string") return [value];
  // A device document lists every key, rotated ones too (older readings need them); a JWK Set
  // has "keys" as well. Fall back to a single current key.
  const listed = jwksOf(value.keys ?? value.public_keys ?? []);
  if (listed.length) return listed;
  return jwksOf(value.public_key_jwk ?? value.public_jwk ?? value.jwk ?? null);
}

// The user's own keys and endpoint, kept in this browser (never sent to the server).
const TRUST_STORE = "cityanchor-explorer-trust";
const TRUST_FIELDS = {
  device_jwk: "device-jwk", operator_vkeys: "operator-vkey", witness_vkeys: "witness-vkeys",
  witness_quorum: "witness-quorum", rpc_url: "rpc-url",
};

function saveTrust() {
  const saved = Object.fromEntries(Object.entries(TRUST_FIELDS).map(([k, id]) => [k, $(id).value]));
  saved.accept = $("accept-server").checked;
  try { localStorage.setItem(TRUST_STORE, JSON.stringify(saved)); } catch { /* storage off */ }
}

function loadTrust() {
  let saved = null;
  try { saved = JSON.parse(localStorage.getItem(TRUST_STORE) ?? "null"); } catch { /* none */ }
  if (!saved || typeof saved !== "object") return;
  for (const [k, id] of Object.entries(TRUST_FIELDS)) {
    if (typeof saved[k] === "string") $(id).value = saved[k];
  }
  $("accept-server").checked = saved.accept === true;
  if (Object.keys(TRUST_FIELDS).some((k) => saved[k])) $("trust").open = true;
}

function forgetTrust() {
  for (const id of Object.values(TRUST_FIELDS)) $(id).value = "";
  $("accept-server").checked = false;
  try { localStorage.removeItem(TRUST_STORE); } catch { /* storage off */ }
}

const lines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);

async function deviceKeys(deviceId) {
  const pasted = $("device-jwk").value.trim();
  if (pasted) {
    try {
      return { keys: jwksOf(JSON.parse(pasted)), from: "user", source: "the key you gave", why: "the key you gave is not a JWK" };
    } catch {
      return { keys: [], from: "user", source: "", why: "the device key you gave is not JSON" };
    }
  }
  const server = { from: "server", source: "this server's device registry" };
  try {
    const r = await getJson(`/v1/devices/${encodeURIComponent(deviceId)}`);
    if (!r.ok) return { ...server, keys: [], why: `the device registry answered HTTP ${r.status}` };
    return { ...server, keys: jwksOf(r.body), why: "the registry lists no key" };
  } catch {
    return { ...server, keys: [], why: "the device registry is unreachable" };
  }
}

async function operatorKeys(config) {
  const pasted = lines($("operator-vkey").value);
  let texts = pasted.length ? pasted : (config.operator_vkeys ?? [config.operator_vkey]).filter(Boolean);
  const from = pasted.length ? "user" : "server";
  let source = pasted.length ? "the key you gave" : "this server's configuration";
  if (!texts.length) {
    try {
      const r = await fetch("/v1/operator-key");
      if (r.ok) {
        const body = (await r.text()).trim();
        let vkey = body;
        try { const j = JSON.parse(body); vkey = j.vkey ?? j.operator_vkey ?? j.key ?? body; } catch { /* text */ }
        texts = [String(vkey)];
        source = "this server's /v1/operator-key";
      }
    } catch { /* none */ }
  }
  if (!texts.length) return { keys: [], from, source, why: "the server publishes no operator key" };
  try {
    return { keys: await Promise.all(texts.map(parseVkey)), from, source, why: "" };
  } catch (err) {
    return { keys: [], from, source, why: err instanceof VerifyError ? err.message : "unreadable key" };
  }
}

async function witnessKeys(config) {
  // The user's witness keys, else the witnesses this server asks for cosignatures (config.json):
  // the page shows which of them cosigned the receipt's checkpoint, and whether they make the
  // quorum.
  const pasted = lines($("witness-vkeys").value);
  const texts = pasted.length ? pasted : (config.witness_vkeys ?? []).filter(Boolean);
  const from = pasted.length ? "user" : texts.length ? "server" : "none";
  const source = pasted.length ? "the keys you gave" : texts.length ? "this server's configuration"
    : "this server configures no witness";
  const given = Number($("witness-quorum").value);
  const quorum = pasted.length && Number.isSafeInteger(given) && given >= 1 ? given
    : pasted.length ? 1 : config.witness_quorum || 1;
  if (!texts.length) return { keys: [], from, source, quorum, why: "this server configures no witness" };
  try {
    return { keys: await Promise.all(texts.map(parseWitnessVkey)), from, source, quorum, why: "" };
  } catch (err) {
    return { keys: [], from, source, quorum, why: err instanceof VerifyError ? err.message : "unreadable witness key" };
  }
}

function chainEndpoints(config, r) {
  // The user's endpoint serves every anchor's chain (verify.js checks its eth_chainId first);
  // else the endpoints this server publishes (never its private one).
  const own = $("rpc-url").value.trim();
  if (own) {
    const ids = [...new Set(r.anchors.map((a) => a.chain_id))];
    return { from: "user", source: own, chains: ids.map((id) => ({ name: "your endpoint", chain_id: id, rpc_url: own })) };
  }
  const chains = (config.chains ?? []).filter((c) => c && c.rpc_url);
  return chains.length
    ? { from: "server", source: `this server's published endpoint ${chains.map((c) => c.rpc_url).join(", ")}`, chains }
    : { from: "none", source: "this server publishes none", chains: [] };
}

// ---- rendering ----------------------------------------------------------------------------

const SYMBOL = { pass: "\u2714", fail: "\u2718", skip: "\u2013" };
const WORD = { pass: "pass", fail: "fail", skip: "skipped" };

function renderChecks(checks, r, sources, accepted) {
  const list = $("checks");
  list.replaceChildren();
  const byName = new Map(checks.map((c) => [c.name, c]));
  for (const name of CHECK_NAMES) {
    const c = byName.get(name) ?? { name, status: "skip", detail: "not run", reason: null };
    // The plain line first; the check's name, status, reason code and detail one click away.
    list.append(el("li", { class: `check ${c.status}`, "data-check": name, "data-status": c.status },
      el("span", { class: "mark", "aria-hidden": "true" }, SYMBOL[c.status]),
      el("span", { class: "plain" }, explain(c, r)),
      el("details", { class: "tech" },
        el("summary", {}, "Technical detail"),
        el("span", { class: "name" }, name), " ",
        el("span", { class: "state" }, WORD[c.status] + (c.reason ? ` (${c.reason})` : "")), " ",
        el("span", { class: "detail" }, c.detail))));
  }
  const v = verdict(checks, sources, accepted);
  const box = $("verdict");
  box.className = `verdict ${v.state}`;
  box.dataset.state = v.state;
  box.textContent = v.text;
  const summary = $("trust-summary");
  summary.replaceChildren(...trustLines(sources, accepted).map((t) =>
    el("li", { "data-key": t.key, "data-from": t.from }, t.text)));
  return v;
}

function markUntrusted(failedNames) {
  // A failed check: the values shown are not proven; say so next to the status and the values.
  const warning = `Untrusted: ${failedNames.join(", ")} failed; these values are not proven.`;
  const reading = $("reading");
  reading.dataset.trust = "untrusted";
  for (const dt of reading.querySelectorAll("dt")) {
    if (dt.textContent === "Status" || dt.textContent === "Values") {
      const dd = dt.nextElementSibling;
      dd.classList.add("untrusted");
      dd.append(" ", el("strong", { class: "untrusted-badge" }, `\u26a0 ${warning}`));
    }
  }
}

function renderReading(r, env) {
  const rows = [["Device id", r.deviceId], ["Sequence", r.seq], ["Format", r.format],
    ["Status", r.status ?? ""]];
  if (env) {
    const rd = env.reading;
    const ms = Number(rd.ts);
    const when = Number.isFinite(ms) && ms < 8.64e15 ? new Date(ms).toISOString() : "";
    rows.push(["Kind", rd.kind], ["Time (device)", `${when} (${rd.ts} ms)`],
      ["Values", Object.entries(rd.values).map(([k, v]) => `${k}: ${v}`).join(", ")],
      ["Previous leaf", rd.prev, "hash"], ["Algorithm", env.alg], ["Key id", bytesToHex(env.kid), "hash"]);
    for (const [k, v] of Object.entries(rd.extra)) rows.push([`Extra: ${k}`, JSON.stringify(v, jsonSafe)]);
  } else {
    rows.push(["Payload", r.envelope.length ? "the envelope did not parse" : "erased by the operator"]);
  }
  rows.push(["Leaf hash", bytesToHex(r.leafHash), "hash"]);
  definitions($("reading"), rows);
}

const jsonSafe = (_k, v) => (typeof v === "bigint" ? v.toString()
  : v instanceof Uint8Array ? bytesToHex(v) : v);

function renderBatch(r) {
  const b = r.batch;
  // No batch id: a v2 receipt names its batch by its log index, which the log path proves.
  definitions($("batch"), [["Log index", r.log.index], ["Index", b.index], ["Size", b.size],
    ["Root", bytesToHex(b.root), "hash"]]);
}

function renderCheckpoint(r) {
  $("note").textContent = r.checkpoint;
  try {
    const cp = parseCheckpoint(r.checkpoint);
    definitions($("checkpoint"), [["Origin", cp.origin], ["Size", cp.size], ["Root", bytesToHex(cp.root), "hash"],
      ["Signed by", cp.signatures.map((s) => `${s.name}+${bytesToHex(s.keyHash)}`).join(", ")]]);
  } catch (err) {
    definitions($("checkpoint"), [["Note", `unreadable: ${err.message}`]]);
  }
}

function renderPath(r) {
  const list = $("path");
  list.replaceChildren();
  const step = (label, hash, cls = "") =>
    list.append(el("li", { class: cls }, el("span", { class: "label" }, label), el("code", { class: "hash" }, hash)));
  step(`Reading's leaf (index ${r.batch.index} of ${r.batch.size})`, bytesToHex(r.leafHash), "node");
  r.batch.path.forEach((h, i) => step(`Batch sibling ${i + 1}`, bytesToHex(h), "sibling"));
  step(`Batch root; log leaf data = uint64(size ${r.batch.size}) || root (index ${r.log.index} of ${r.log.size})`,
    bytesToHex(r.batch.root), "node");
  r.log.path.forEach((h, i) => step(`Log sibling ${i + 1}`, bytesToHex(h), "sibling"));
  step(r.anchors.length ? "Log root (signed in the checkpoint, anchored on chain)" : "Log root (signed in the checkpoint)",
    bytesToHex(r.log.root), "node");
}

function renderAnchors(r) {
  const body = $("anchors").querySelector("tbody");
  body.replaceChildren();
  if (!r.anchors.length) {
    body.append(el("tr", {}, el("td", { colspan: 5 }, `Not anchored yet (status ${r.status ?? "unknown"}).`)));
  }
  for (const a of r.anchors) {
    body.append(el("tr", {}, el("td", {}, a.chain_id), el("td", { class: "hash" }, a.contract),
      el("td", { class: "hash" }, a.tx_hash), el("td", {}, a.block_number), el("td", {}, a.block_time)));
  }
}

// ---- flow ---------------------------------------------------------------------------------

async function show(receiptJson, origin) {
  const result = $("result");
  let r;
  try {
    r = parseReceipt(receiptJson);
  } catch (err) {
    result.hidden = true;
    const reason = err instanceof VerifyError ? ` (${err.reason})` : "";
    setStatus(`This is not a readable receipt${reason}: ${err.message}`, "error");
    return;
  }
  setStatus(`Verifying ${origin}…`, "verifying");
  result.hidden = false;
  $("result-title").textContent = `Receipt: ${r.deviceId} #${r.seq}`;
  $("checks").replaceChildren();
  $("trust-summary").replaceChildren();
  $("verdict").textContent = "";
  delete $("reading").dataset.trust;
  renderBatch(r);
  renderCheckpoint(r);
  renderPath(r);
  renderAnchors(r);
  renderReading(r, null);
  try {
    const config = await loadConfig();
    const [devKeys, opKeys, witKeys] = await Promise.all(
      [deviceKeys(r.deviceId), operatorKeys(config), witnessKeys(config)]);
    const rpc = chainEndpoints(config, r);
    const { checks, envelope } = await verifyReceipt(r, {
      deviceKeys: devKeys, operatorKeys: opKeys, chains: rpc.chains,
      witnessKeys: witKeys, witnessQuorum: witKeys.quorum,
    });
    const label = (k) => ({ from: k.from, label: k.source });
    const sources = {
      device: label(devKeys), operator: label(opKeys), witnesses: label(witKeys), rpc: label(rpc),
    };
    renderReading(r, envelope);
    const v = renderChecks(checks, r, sources, $("accept-server").checked);
    if (v.untrusted) markUntrusted(checks.filter((c) => c.status === "fail").map((c) => c.name));
    setStatus(`Verified ${origin} in this browser.`, "done");
  } catch (err) {
    setStatus(`Verification stopped: ${err && err.message}`, "error");
  }
}

async function lookup(deviceId, seq) {
  const url = `/v1/receipts/${encodeURIComponent(deviceId)}/${encodeURIComponent(seq)}`;
  setStatus(`Fetching the receipt of ${deviceId} #${seq}…`, "loading");
  let r;
  try {
    r = await getJson(url);
  } catch {
    setStatus("The server is unreachable.", "error");
    return;
  }
  if (!r.ok) {
    const detail = r.body && typeof r.body.detail === "string" ? `: ${r.body.detail}` : "";
    $("result").hidden = true;
    setStatus(`No receipt for ${deviceId} #${seq} (HTTP ${r.status}${detail}).`, "error");
    return;
  }
  const params = new URLSearchParams({ device_id: deviceId, seq: String(seq) });
  history.replaceState(null, "", `${location.pathname}?${params}`);
  await show(r.body, `the receipt of ${deviceId} #${seq}`);
}

function start() {
  $("lookup").addEventListener("submit", (ev) => {
    ev.preventDefault();
    lookup($("device-id").value.trim(), $("seq").value.trim());
  });
  $("paste").addEventListener("submit", (ev) => {
    ev.preventDefault();
    let json;
    try {
      json = JSON.parse($("receipt-json").value);
    } catch {
      $("result").hidden = true;
      setStatus("The pasted text is not JSON.", "error");
      return;
    }
    show(json, "the pasted receipt");
  });
  loadTrust();
  $("trust-form").addEventListener("input", saveTrust);
  $("trust-form").addEventListener("submit", (ev) => ev.preventDefault());
  $("trust-forget").addEventListener("click", forgetTrust);
  loadConfig();
  const q = new URLSearchParams(location.search);
  const deviceId = q.get("device_id") ?? q.get("device");
  if (deviceId && q.get("seq")) {
    $("device-id").value = deviceId;
    $("seq").value = q.get("seq");
    lookup(deviceId, q.get("seq"));
  }
}

start();
