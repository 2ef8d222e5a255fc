// Cross-check the explorer's verify.js (run here by Node's WebCrypto) against the project's
// vectors: the RFC 9162 inclusion proofs of tests/vectors/rfc9162/inclusion and the envelope
// vectors of tests/vectors/envelope (valid: parsed reading, leaf hash, signature, with the case's
// own key when it names one; invalid: the same reason code as anchor/envelope.py, non_canonical
// included), and the batch-log leaf known answers of tests/vectors/log-leaf (receipt v2).
// Prints one JSON line; exit 1 on any mismatch.

import { readFileSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  VerifyError, bytesToHex, checkSignature, hexToBytes, leafHash, logLeafData, logLeafHash,
  parseEnvelope, parseVkey, verifyInclusion,
} from "../../anchor/api/explorer/static/verify.js";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const VECTORS = join(ROOT, "tests", "vectors");
const b64 = (s) => Uint8Array.from(Buffer.from(s ?? "", "base64"));
const mismatches = [];
const counts = { inclusion: 0, valid_envelopes: 0, invalid_envelopes: 0, vkeys: 0, log_leaves: 0 };

function* jsonFiles(dir) {
  for (const name of readdirSync(dir).sort()) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) yield* jsonFiles(path);
    else if (name.endsWith(".json")) yield path;
  }
}

for (const path of jsonFiles(join(VECTORS, "rfc9162", "inclusion"))) {
  const v = JSON.parse(readFileSync(path, "utf8"));
  let err = null;
  try {
    await verifyInclusion(b64(v.leafHash), v.leafIdx, v.treeSize, (v.proof ?? []).map(b64), b64(v.root));
  } catch (e) {
    if (!(e instanceof VerifyError)) throw e;
    err = e;
  }
  counts.inclusion++;
  if (Boolean(err) !== v.wantErr) {
    mismatches.push({ vector: path.slice(ROOT.length), wantErr: v.wantErr, got: err && err.message });
  }
}

const hexOf = (c) => (c.hex !== undefined ? hexToBytes(c.hex.toLowerCase()) : new TextEncoder().encode(c.text));
const valid = JSON.parse(readFileSync(join(VECTORS, "envelope", "valid.json"), "utf8"));
for (const c of valid.cases) {
  counts.valid_envelopes++;
  const raw = hexOf(c);
  try {
    const env = parseEnvelope(raw);
    const got = { ...env.reading, seq: Number(env.reading.seq), ts: Number(env.reading.ts) };
    for (const k of ["device_id", "seq", "ts", "kind", "prev"]) {
      if (got[k] !== c.reading[k]) throw new Error(`${k}: ${got[k]} != ${c.reading[k]}`);
    }
    const sorted = (o) => JSON.stringify(Object.entries(o).sort());
    if (sorted(got.values) !== sorted(c.reading.values)) throw new Error(`values ${sorted(got.values)}`);
    if (env.format !== c.format || env.alg !== c.alg) throw new Error(`format/alg ${env.format} ${env.alg}`);
    if (bytesToHex(await leafHash(raw)) !== c.leaf_hash) throw new Error("leaf hash differs");
    const sig = await checkSignature(env, { keys: [c.key ?? valid.key], source: "vector", why: "" });
    if (sig.status !== "pass") throw new Error(`signature ${sig.status}: ${sig.detail}`);
  } catch (e) {
    mismatches.push({ vector: `valid: ${c.desc}`, got: String(e.message) });
  }
}

const invalid = JSON.parse(readFileSync(join(VECTORS, "envelope", "invalid.json"), "utf8"));
const SIGNATURE_REASONS = new Set(["bad_signature", "unknown_kid", "alg_key_mismatch"]);
for (const c of invalid.cases) {
  counts.invalid_envelopes++;
  let reason = null;
  try {
    const env = parseEnvelope(hexOf(c));
    if (SIGNATURE_REASONS.has(c.reason)) {
      const sig = await checkSignature(env, { keys: [invalid.key], source: "vector", why: "" });
      reason = sig.status === "fail" ? sig.reason : `signature ${sig.status}`;
    } else {
      reason = "accepted";
    }
  } catch (e) {
    if (!(e instanceof VerifyError)) throw e;
    reason = e.reason;
  }
  if (reason !== c.reason) mismatches.push({ vector: `invalid: ${c.desc}`, want: c.reason, got: reason });
}

// Note verifier keys: every "vkey" string in the note vectors parses, "+" in its base64 or not.
for (const path of jsonFiles(join(VECTORS, "note"))) {
  const vkeys = [];
  const walk = (v) => {
    if (Array.isArray(v)) v.forEach(walk);
    else if (v && typeof v === "object") {
      for (const [k, x] of Object.entries(v)) {
        if (/vkey|verifier/i.test(k) && typeof x === "string" && x.split("+").length >= 3) vkeys.push(x);
        else walk(x);
      }
    }
  };
  walk(JSON.parse(readFileSync(path, "utf8")));
  for (const vkey of vkeys) {
    counts.vkeys++;
    try {
      await parseVkey(vkey);
    } catch (e) {
      mismatches.push({ vector: `vkey in ${path.slice(ROOT.length)}: ${vkey}`, got: e.message });
    }
  }
}

// Batch-log leaves (receipt v2): uint64_be(size) || root, and its leaf hash.
const logLeaves = JSON.parse(readFileSync(join(VECTORS, "log-leaf", "known.json"), "utf8"));
for (const c of logLeaves.cases) {
  counts.log_leaves++;
  const root = hexToBytes(c.root, "root", 32);
  const data = bytesToHex(logLeafData(c.size, root));
  const hash = bytesToHex(await logLeafHash(c.size, root));
  if (data !== c.leaf_data || hash !== c.leaf_hash) {
    mismatches.push({ vector: `log leaf size ${c.size}`, want: c.leaf_hash, got: hash });
  }
}
for (const bad of [0, -1, 1.5, 2 ** 53]) {
  try {
    logLeafData(bad, new Uint8Array(32));
    mismatches.push({ vector: `log leaf size ${bad}`, want: "proof_malformed", got: "accepted" });
  } catch (e) {
    if (!(e instanceof VerifyError)) throw e;
  }
}

console.log(JSON.stringify({ counts, mismatches }));
process.exitCode = mismatches.length ? 1 : 0;
