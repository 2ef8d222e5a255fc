// Drive the proof explorer in headless Chromium (the Debian package, through playwright-core)
// and print one JSON object with what the page showed.
//
//   node tests/browser/run-explorer.mjs BASE_URL SCREENSHOT.png DEVICE:SEQ [DEVICE:SEQ ...]
//
// Scenarios: each DEVICE:SEQ is looked up through the form (the first one is screenshotted to
// SCREENSHOT.png); then the first receipt is pasted three times, tampered: one envelope byte
// flipped (screenshot SCREENSHOT-tampered.png), log.root changed, and the envelope re-spelt by a
// third party (issue 10 item 5: COSE with {99: "attacker text"} in the unsigned unprotected
// header, or a JWS with a padded signature; leaf_hash made to match). Exit 0 when the page ran
// (the caller judges the statuses), 2 on a usage or browser error.

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

const [baseUrl, screenshot, ...targets] = process.argv.slice(2);
if (!baseUrl || !screenshot || !targets.length || targets.some((t) => !/^[^:]+:\d+$/.test(t))) {
  console.error("usage: run-explorer.mjs BASE_URL SCREENSHOT.png DEVICE:SEQ [DEVICE:SEQ ...]");
  process.exit(2);
}
const lookups = targets.map((t) => {
  const at = t.lastIndexOf(":");
  return { device_id: t.slice(0, at), seq: Number(t.slice(at + 1)) };
});

async function readResult(page) {
  // Wait for the page to finish (verified or an error), then read every check row.
  await page.waitForSelector('#result[data-state="done"], #result[data-state="error"]', {
    state: "attached", timeout: 20000,
  });
  return page.evaluate(() => {
    const checks = {}, details = {}, states = {};
    for (const li of document.querySelectorAll("#checks li[data-check]")) {
      checks[li.dataset.check] = li.dataset.status;
      details[li.dataset.check] = li.querySelector(".detail")?.textContent ?? "";
      states[li.dataset.check] = li.querySelector(".state")?.textContent ?? "";
    }
    return {
      state: document.getElementById("result").dataset.state,
      status: document.getElementById("status").textContent,
      verdict: document.getElementById("verdict").textContent,
      title: document.getElementById("result-title").textContent,
      checks, details, states,
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

function changeLogRoot(receipt) {
  const root = receipt.log.root;
  const first = root[0] === "0" ? "1" : "0";
  return { ...receipt, log: { ...receipt.log, root: first + root.slice(1) } };
}

const out = { chromium: null, lookups: [], tampered: {}, screenshots: [], console_errors: [] };
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
    await page.goto(explorer);
    await page.getByLabel("Device id").fill(target.device_id);
    await page.getByLabel("Sequence number").fill(String(target.seq));
    await page.getByRole("button", { name: "Look up and verify" }).click();
    out.lookups.push({ ...target, ...(await readResult(page)), url: page.url() });
    if (i === 0) {
      await page.screenshot({ path: screenshot, fullPage: true });
      out.screenshots.push(screenshot);
    }
  }

  // 2) paste the first receipt, tampered.
  const first = lookups[0];
  const resp = await fetch(new URL(`/v1/receipts/${encodeURIComponent(first.device_id)}/${first.seq}`, baseUrl));
  if (!resp.ok) throw new Error(`GET receipt: HTTP ${resp.status}`);
  const receipt = await resp.json();
  for (const [name, tamper] of [["envelope_byte", flipEnvelopeByte], ["log_root", changeLogRoot],
    ["non_canonical", respellEnvelope]]) {
    await page.goto(explorer);
    await page.getByLabel(/Or paste a receipt/).fill(JSON.stringify(tamper(receipt), null, 2));
    await page.getByRole("button", { name: "Verify pasted receipt" }).click();
    out.tampered[name] = await readResult(page);
    if (name === "envelope_byte") {
      const path = screenshot.replace(/(\.png)?$/, "-tampered.png");
      await page.screenshot({ path, fullPage: true });
      out.screenshots.push(path);
    }
  }
} catch (err) {
  out.error = String(err && err.stack || err);
  console.log(JSON.stringify(out));
  process.exitCode = 2;
} finally {
  await context?.close().catch(() => {});
  rmSync(profile, { recursive: true, force: true });
}
if (!out.error) console.log(JSON.stringify(out));
