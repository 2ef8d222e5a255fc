// cityanchor proof explorer: the page. Fetches a receipt and the keys, shows them, and runs the
// checks of verify.js. Every device-supplied string reaches the DOM as text (textContent /
// text nodes), never as HTML.

import {
  CHECK_NAMES, VerifyError, bytesToHex, parseCheckpoint, parseReceipt, parseVkey, parseWitnessVkey,
  verifyReceipt,
} from "./verify.js";

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

async function deviceKeys(deviceId) {
  const pasted = $("device-jwk").value.trim();
  if (pasted) {
    try {
      return { keys: jwksOf(JSON.parse(pasted)), source: "the key you pasted", why: "the pasted JWK has no key" };
    } catch {
      return { keys: [], source: "", why: "the pasted device key is not JSON" };
    }
  }
  try {
    const r = await getJson(`/v1/devices/${encodeURIComponent(deviceId)}`);
    if (!r.ok) return { keys: [], source: "", why: `the device registry answered HTTP ${r.status}` };
    return { keys: jwksOf(r.body), source: "this server's device registry", why: "the registry lists no key" };
  } catch {
    return { keys: [], source: "", why: "the device registry is unreachable" };
  }
}

async function operatorKeys(config) {
  const pasted = $("operator-vkey").value.trim();
  let texts = pasted ? [pasted] : (config.operator_vkeys ?? [config.operator_vkey]).filter(Boolean);
  let source = pasted ? "the key you pasted" : "this server's configuration";
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
  if (!texts.length) return { keys: [], source, why: "the server publishes no operator key" };
  try {
    return { keys: await Promise.all(texts.map(parseVkey)), source, why: "" };
  } catch (err) {
    return { keys: [], source, why: err instanceof VerifyError ? err.message : "unreadable key" };
  }
}

async function witnessKeys(config) {
  // The witnesses this server asks for cosignatures (config.json): the page shows which of them
  // cosigned the receipt's checkpoint, and whether they make the server's quorum.
  const texts = (config.witness_vkeys ?? []).filter(Boolean);
  if (!texts.length) return { keys: [], why: "this server configures no witness" };
  try {
    return { keys: await Promise.all(texts.map(parseWitnessVkey)), why: "" };
  } catch (err) {
    return { keys: [], why: err instanceof VerifyError ? err.message : "unreadable witness key" };
  }
}

// ---- rendering ----------------------------------------------------------------------------

const SYMBOL = { pass: "\u2714", fail: "\u2718", skip: "\u2013" };
const WORD = { pass: "pass", fail: "fail", skip: "skipped" };

function renderChecks(checks) {
  const list = $("checks");
  list.replaceChildren();
  const byName = new Map(checks.map((c) => [c.name, c]));
  for (const name of CHECK_NAMES) {
    const c = byName.get(name) ?? { name, status: "skip", detail: "not run", reason: null };
    list.append(el("li", { class: `check ${c.status}`, "data-check": name, "data-status": c.status },
      el("span", { class: "mark", "aria-hidden": "true" }, SYMBOL[c.status]),
      el("span", { class: "name" }, name),
      el("span", { class: "state" }, WORD[c.status] + (c.reason ? ` (${c.reason})` : "")),
      el("span", { class: "detail" }, c.detail)));
  }
  const failed = checks.filter((c) => c.status === "fail").map((c) => c.name);
  // Witnessing is opt-in: without witness keys its skip does not make the receipt "not fully
  // verified" (ReceiptReport.fully_verified in anchor/verify.py).
  const skipped = checks.filter((c) => c.status === "skip" && c.name !== "witnesses").map((c) => c.name);
  const verdict = $("verdict");
  verdict.className = failed.length ? "verdict fail" : skipped.length ? "verdict skip" : "verdict pass";
  verdict.textContent = failed.length
    ? `Not valid: ${failed.join(", ")} failed.`
    : skipped.length
      ? `Valid, not fully verified: ${skipped.join(", ")} skipped.`
      : "Fully verified: every check passed in this browser.";
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
  $("verdict").textContent = "";
  renderBatch(r);
  renderCheckpoint(r);
  renderPath(r);
  renderAnchors(r);
  renderReading(r, null);
  try {
    const config = await loadConfig();
    const [devKeys, opKeys, witKeys] = await Promise.all(
      [deviceKeys(r.deviceId), operatorKeys(config), witnessKeys(config)]);
    const { checks, envelope } = await verifyReceipt(r, {
      deviceKeys: devKeys, operatorKeys: opKeys, chains: config.chains ?? [],
      witnessKeys: witKeys, witnessQuorum: config.witness_quorum || 1,
    });
    renderReading(r, envelope);
    renderChecks(checks);
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
