// Drive the proof explorer in headless Chromium (the Debian package, through playwright-core)
// and print one JSON object with what the page showed.
//
//   node tests/browser/run-explorer.mjs BASE_URL SCREENSHOT.png [--size-attack DEVICE:SEQ] \
//        DEVICE:SEQ [DEVICE:SEQ ...]
//
// Scenarios: each DEVICE:SEQ is looked up through the form (the first one is screenshotted to
// SCREENSHOT.png); then the first receipt is pasted three times, tampered: one envelope byte
// flipped (screenshot SCREENSHOT-tampered.png), log.root changed, and the envelope re-spelt by a
// third party (issue 10 item 5: COSE with {99: "attacker text"} in the unsigned unprotected
// header, or a JWS with a padded signature; leaf_hash made to match). With --size-attack, that
// receipt (leaf 0 of a batch of 8) is pasted with batch.size lowered by one (issue 10 item 6;
// screenshot SCREENSHOT-size.png), and rewritten as a v1 receipt with a batch.id. Last (issue 14
// item 16), the first reading is looked up again with keys and an endpoint the user gives in the
// trust form (screenshot SCREENSHOT-own.png), after a reload (they are remembered), with this
// server's keys explicitly accepted, and after "Forget". Exit 0 when the page ran (the caller
// judges the statuses), 2 on a usage or browser error.

import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const CHROMIUM = process.env.CITYANCHOR_CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

const [baseUrl, screenshot, ...rest] = process.argv.slice(2);
let sizeAttack = null;
if (rest[0] === "--size-attack") sizeAttack = rest.splice(0, 2)[1];
const targets = rest;
const TARGET = /^[^:]+:\d+$/;
if (!baseUrl || !screenshot || !targets.length || targets.some((t) => !TARGET.test(t))
    || (sizeAttack !== null && !TARGET.test(sizeAttack ?? ""))) {
  console.error("usage: run-explorer.mjs BASE_URL SCREENSHOT.png [--size-attack DEVICE:SEQ] DEVICE:SEQ [DEVICE:SEQ ...]");
  process.exit(2);
}
const parseTarget = (t) => {
  const at = t.lastIndexOf(":");
  return { device_id: t.slice(0, at), seq: Number(t.slice(at + 1)) };
};
const lookups = targets.map(parseTarget);

async function readResult(page) {
  // Wait for the page to finish (verified or an error), then read every check row.
  await page.waitForSelector('#result[data-state="done"], #result[data-state="error"]', {
    state: "attached", timeout: 20000,
  });
  return page.evaluate(() => {
    const checks = {}, details = {}, states = {}, plain = {}, tech_hidden = {};
    for (const li of document.querySelectorAll("#checks li[data-check]")) {
      checks[li.dataset.check] = li.dataset.status;
      details[li.dataset.check] = li.querySelector(".detail")?.textContent ?? "";
      states[li.dataset.check] = li.querySelector(".state")?.textContent ?? "";
      plain[li.dataset.check] = li.querySelector(".plain")?.textContent ?? "";
      // The technical detail is one click away: present, but not shown until opened.
      const tech = li.querySelector("details.tech");
      const detail = tech?.querySelector(".detail");
      tech_hidden[li.dataset.check] = !!detail && !tech.open && !detail.checkVisibility();
    }
    const trust = {};
    for (const li of document.querySelectorAll("#trust-summary li[data-key]")) {
      trust[li.dataset.key] = { from: li.dataset.from, text: li.textContent };
    }
    const rows = {};
    for (const dt of document.querySelectorAll("#reading dt")) {
      const dd = dt.nextElementSibling;
      rows[dt.textContent] = { text: dd.textContent, untrusted: dd.classList.contains("untrusted") };
    }
    return {
      state: document.getElementById("result").dataset.state,
      status: document.getElementById("status").textContent,
      verdict: document.getElementById("verdict").textContent,
      verdict_state: document.getElementById("verdict").dataset.state ?? "",
      title: document.getElementById("result-title").textContent,
      reading_trust: document.getElementById("reading").dataset.trust ?? "",
      checks, details, states, plain, tech_hidden, trust, rows,
    };
  });
}

function flipEnvelopeByte(receipt) {
  // The last byte: in a COSE_Sign1 message it is inside the signature, so the envelope still
  // parses and the failures are the signature and the hashes, not the parser.
  const raw = Buffer.from(receipt.reading.envelope, "base64url");
  raw[raw.length - 1] ^= 0x01;
  return { ...receipt, reading: { ...receipt.reading, envelope: raw.toString("base64url") } };
}

function respellEnvelope(receipt) {
  // What anyone can do to a genuine envelope without the key; the receipt then reads as if the
  // variant had been sealed (its leaf_hash), which is what happened before the fix.
  const raw = Buffer.from(receipt.reading.envelope, "base64url");
  let variant;
  if (receipt.reading.format === "cose-sign1") {
    // d2 84 58 <len> <protected> a0 ...: replace the empty unprotected map a0.
    if (raw[0] !== 0xd2 || raw[1] !== 0x84 || raw[2] !== 0x58) throw new Error("unexpected COSE head");
    const at = 4 + raw[3];
    if (raw[at] !== 0xa0) throw new Error("unprotected header is not a0");
    const text = Buffer.from("attacker text");
    const header = Buffer.concat([Buffer.from([0xa1, 0x18, 99, 0x60 | text.length]), text]);
    variant = Buffer.concat([raw.subarray(0, at), header, raw.subarray(at + 1)]);
  } else {
    variant = Buffer.concat([raw, Buffer.from("==")]);
  }
  const leaf = createHash("sha256").update(Buffer.concat([Buffer.from([0]), variant])).digest("hex");
  return { ...receipt, leaf_hash: leaf, reading: { ...receipt.reading, envelope: variant.toString("base64url") } };
}

function lowerBatchSize(receipt) {
  return { ...receipt, batch: { ...receipt.batch, size: receipt.batch.size - 1 } };
}

function asV1(receipt) {
  return { ...receipt, version: "cityanchor/receipt/v1", batch: { id: 999999, ...receipt.batch } };
}

async function fetchReceipt(target) {
  const url = new URL(`/v1/receipts/${encodeURIComponent(target.device_id)}/${target.seq}`, baseUrl);
  const resp = await fetch(url);
  if (!resp.ok) throw new Error(`GET receipt: HTTP ${resp.status}`);
  return resp.json();
}

async function lookUp(page, explorer, target) {
  await page.goto(explorer);
  await page.getByLabel("Device id").fill(target.device_id);
  await page.getByLabel("Sequence number").fill(String(target.seq));
  await page.getByRole("button", { name: "Look up and verify" }).click();
  return readResult(page);
}

const openTrust = (page) => page.evaluate(() => { document.getElementById("trust").open = true; });

async function getJson(path) {
  const resp = await fetch(new URL(path, baseUrl));
  if (!resp.ok) throw new Error(`GET ${path}: HTTP ${resp.status}`);
  return resp.json();
}

async function paste(page, explorer, receipt) {
  await page.goto(explorer);
  await page.getByLabel(/Or paste a receipt/).fill(JSON.stringify(receipt, null, 2));
  await page.getByRole("button", { name: "Verify pasted receipt" }).click();
  return readResult(page);
}

function changeLogRoot(receipt) {
  const root = receipt.log.root;
  const first = root[0] === "0" ? "1" : "0";
  return { ...receipt, log: { ...receipt.log, root: first + root.slice(1) } };
}

const out = {
  chromium: null, lookups: [], tampered: {}, size_attack: null, screenshots: [], console_errors: [],
};
const profile = mkdtempSync(join(tmpdir(), "cityanchor-chromium-"));
let context;
try {
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM, headless: true, args: ARGS, viewport: { width: 1280, height: 900 },
  });
  out.chromium = context.browser()?.version() ?? null;
  const page = context.pages()[0] ?? (await context.newPage());
  page.setDefaultTimeout(20000);
  page.on("console", (msg) => { if (msg.type() === "error") out.console_errors.push(msg.text()); });
  page.on("pageerror", (err) => out.console_errors.push(String(err)));
  const explorer = new URL("/explorer", baseUrl).href;

  // 1) look each reading up through the form.
  for (const [i, target] of lookups.entries()) {
    out.lookups.push({ ...target, ...(await lookUp(page, explorer, target)), url: page.url() });
    if (i === 0) {
      await page.screenshot({ path: screenshot, fullPage: true });
      out.screenshots.push(screenshot);
    }
  }

  // 2) paste the first receipt, tampered.
  const receipt = await fetchReceipt(lookups[0]);
  for (const [name, tamper] of [["envelope_byte", flipEnvelopeByte], ["log_root", changeLogRoot],
    ["non_canonical", respellEnvelope]]) {
    out.tampered[name] = await paste(page, explorer, tamper(receipt));
    if (name === "envelope_byte") {
      const path = screenshot.replace(/(\.png)?$/, "-tampered.png");
      await page.screenshot({ path, fullPage: true });
      out.screenshots.push(path);
    }
  }

  // 3) the batch.size attack: genuine, size lowered by one, and the same receipt as v1.
  if (sizeAttack !== null) {
    const genuine = await fetchReceipt(parseTarget(sizeAttack));
    out.size_attack = {
      batch: { size: genuine.batch.size, index: genuine.batch.index },
      genuine: await paste(page, explorer, genuine),
      lowered: await paste(page, explorer, lowerBatchSize(genuine)),
    };
    const path = screenshot.replace(/(\.png)?$/, "-size.png");
    await page.screenshot({ path, fullPage: true });
    out.screenshots.push(path);
    out.size_attack.v1 = await paste(page, explorer, asV1(genuine));
  }

  // 4) the user's own keys and endpoint (here the same ones, fetched as a user would from the
  // operator's publication and the device's maker), remembered across a reload; then the
  // server's keys accepted; then forgotten.
  const first = lookups[0];
  const device = await getJson(`/v1/devices/${encodeURIComponent(first.device_id)}`);
  const config = await getJson("/explorer/config.json");
  const rpcUrl = process.env.CITYANCHOR_TEST_RPC_URL || config.chains[0].rpc_url;
  await page.goto(explorer);
  await openTrust(page);
  await page.getByLabel("Device public key (JWK)").fill(JSON.stringify(device.keys ?? device.public_key_jwk));
  await page.getByLabel(/Operator note keys/).fill(config.operator_vkeys.join("\n"));
  await page.getByLabel(/Chain JSON-RPC endpoint/).fill(rpcUrl);
  const own = {};
  own.given = await lookUp(page, explorer, first);
  const ownShot = screenshot.replace(/(\.png)?$/, "-own.png");
  await page.screenshot({ path: ownShot, fullPage: true });
  out.screenshots.push(ownShot);
  own.stored = await page.evaluate(() => localStorage.getItem("cityanchor-explorer-trust"));
  await page.reload();
  own.fields_after_reload = await page.evaluate(() => ({
    device_jwk: document.getElementById("device-jwk").value,
    operator_vkeys: document.getElementById("operator-vkey").value,
    rpc_url: document.getElementById("rpc-url").value,
  }));
  own.after_reload = await lookUp(page, explorer, first);
  await openTrust(page);
  await page.getByRole("button", { name: "Forget what I gave" }).click();
  await page.getByLabel(/I accept this server's keys/).check();
  own.accepted = await lookUp(page, explorer, first);
  await openTrust(page);
  await page.getByRole("button", { name: "Forget what I gave" }).click();
  own.forgotten = await lookUp(page, explorer, first);
  own.stored_after_forget = await page.evaluate(() => localStorage.getItem("cityanchor-explorer-trust"));
  out.own_keys = own;
} catch (err) {
  out.error = String(err && err.stack || err);
  console.log(JSON.stringify(out));
  process.exitCode = 2;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
if (!out.error) console.log(JSON.stringify(out));
