// cityanchor proof explorer: the receipt checks, run in the browser.
//
// An independent implementation of docs/verifier-guide.md ("The checks, in order"), with the
// browser's own primitives: WebCrypto SHA-256, Ed25519 and ECDSA P-256, and the chain's
// JSON-RPC through fetch(). No DOM access here: every function takes data and returns data.
// The check names, order and reason codes are those of anchor/verify.py.
//
// Each check is {name, status: "pass" | "fail" | "skip", detail, reason}. A check the browser
// cannot run (no key, no chain endpoint, an algorithm it lacks) is "skip", never "pass".

export const CHECK_NAMES = [
  "envelope", "signature", "leaf_hash", "batch_path", "log_path",
  "checkpoint", "checkpoint_signature", "witnesses", "anchors",
];

export const MAX_ENVELOPE_BYTES = 16 * 1024;
const MAX_DEPTH = 8;            // CBOR and JSON nesting bound (anchor/envelope.py)
const MAX_UINT = 2n ** 64n - 1n;
const MAX_PATH = 64;            // an RFC 9162 audit path of a tree of < 2**64 leaves
const LEAF_PREFIX = 0x00;       // RFC 9162 section 2.1.1
const NODE_PREFIX = 0x01;
const SHA256_SCHEME = "rfc9162-sha256";
export const RECEIPT_VERSION = "cityanchor/receipt/v2";
const SIG_PREFIX = "\u2014 ";   // C2SP signed-note: em dash, space
const ANCHORED_AT = "0x9591a610"; // keccak256("anchoredAt(bytes32)")[:4]
const COSE_ALGS = new Map([[-19, "Ed25519"], [-8, "EdDSA"], [-7, "ES256"]]);
// n, the order of the P-256 base point: an ES256 signature must be low-S, s <= n / 2.
const P256_N = 0xffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551n;
const ALG_KEY = { Ed25519: "Ed25519", EdDSA: "Ed25519", ES256: "P-256" };

/** An error with a stable reason code (the same codes as the Python core). */
export class VerifyError extends Error {
  constructor(reason, detail) {
    super(detail);
    this.reason = reason;
  }
}

const check = (name, status, detail, reason = null) => ({ name, status, detail, reason });
const failed = (name, err) =>
  check(name, "fail", err.message, err instanceof VerifyError ? err.reason : "internal");

// ------------------------------------------------------------------------------------------
// Bytes, hex, base64
// ------------------------------------------------------------------------------------------

export const utf8 = (text) => new TextEncoder().encode(text);

export function hexToBytes(hex, what = "hex", size = null) {
  if (typeof hex !== "string" || !/^(?:[0-9a-f]{2})*$/.test(hex)) {
    throw new VerifyError("receipt_malformed", `${what} is not lowercase hex`);
  }
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(i * 2, 2), 16);
  if (size !== null && out.length !== size) {
    throw new VerifyError("receipt_malformed", `${what} is ${out.length} bytes, not ${size}`);
  }
  return out;
}

export const bytesToHex = (bytes) =>
  Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");

export function b64Encode(bytes) {
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return btoa(bin);
}

/** Canonical RFC 4648 section 4 base64 (padded, no stray bits), or null. */
export function b64Decode(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9+/]*={0,2}$/.test(text) || text.length % 4) {
    return null;
  }
  const bin = atob(text);
  const out = Uint8Array.from(bin, (c) => c.charCodeAt(0));
  return b64Encode(out) === text ? out : null;
}

/** Strict unpadded base64url (section 5), canonical; or null. */
export function b64urlDecode(text) {
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    return null;
  }
  const padded = text.replace(/-/g, "+").replace(/_/g, "/") + "==".slice(0, (4 - text.length % 4) % 4);
  return b64Decode(padded);
}

export const b64urlEncode = (bytes) =>
  b64Encode(bytes).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

const equalBytes = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);

function subtle() {
  if (!globalThis.crypto || !globalThis.crypto.subtle) {
    throw new VerifyError("no_webcrypto",
      "this page has no WebCrypto (it must be served over HTTPS or from localhost)");
  }
  return globalThis.crypto.subtle;
}

export const sha256 = async (bytes) => new Uint8Array(await subtle().digest("SHA-256", bytes));

// ------------------------------------------------------------------------------------------
// RFC 9162 section 2.1: leaf and node hashes, inclusion proofs (2.1.3.2)
// ------------------------------------------------------------------------------------------

export const leafHash = (data) => sha256(concat(Uint8Array.of(LEAF_PREFIX), data));
export const nodeHash = (l, r) => sha256(concat(Uint8Array.of(NODE_PREFIX), l, r));

/**
 * The batch log's leaf data for one batch: uint64_be(size) || root, 40 bytes (DESIGN.md
 * "Batch log", receipt v2; anchor.merkle.log_leaf_data). The size is in the leaf because an
 * inclusion proof alone does not bind the tree size: leaf 0 of 8 has the same path as leaf 0 of 7.
 */
export function logLeafData(size, root) {
  if (!Number.isSafeInteger(size) || size < 1) {
    throw new VerifyError("proof_malformed", "batch size must be an integer of at least 1");
  }
  if (!(root instanceof Uint8Array) || root.length !== 32) {
    throw new VerifyError("proof_malformed", "batch root must be 32 bytes");
  }
  const out = new Uint8Array(40);
  new DataView(out.buffer).setBigUint64(0, BigInt(size), false);
  out.set(root, 8);
  return out;
}

/** SHA-256(0x00 || uint64_be(size) || root): the batch log's leaf hash for one batch. */
export const logLeafHash = (size, root) => leafHash(logLeafData(size, root));

/** Verify that `leaf` is leaf `index` of the `size`-leaf tree with `root`; throws VerifyError. */
export async function verifyInclusion(leaf, index, size, path, root) {
  if (!Number.isSafeInteger(index) || !Number.isSafeInteger(size) || index < 0) {
    throw new VerifyError("proof_malformed", "index and size must be unsigned integers");
  }
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (index >= size) {
    throw new VerifyError("proof_malformed", `index ${index} is not below size ${size}`);
  }
  if ([leaf, root, ...path].some((h) => h.length !== 32)) {
    throw new VerifyError("proof_malformed", "every hash must be 32 bytes");
  }
  if (path.length > MAX_PATH) {
    throw new VerifyError("proof_malformed", `path of ${path.length} hashes is too long`);
  }
  // (1)-(2): fn = index, sn = size - 1, r = leaf hash.
  let r = leaf;
  for (const p of path) {
    // (3a) a proof longer than the tree is high: invalid.
    if (sn === 0n) throw new VerifyError("proof_malformed", "path is longer than the tree");
    if ((fn & 1n) === 1n || fn === sn) {
      // (3b) p is a left sibling.
      r = await nodeHash(p, r);
      // (3b.ii) skip the levels where this node is a left child.
      while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
    } else {
      // (3c) p is a right sibling.
      r = await nodeHash(r, p);
    }
    // (3d)
    fn >>= 1n; sn >>= 1n;
  }
  // (4) sn is 0 and r equals the root.
  if (sn !== 0n) throw new VerifyError("proof_malformed", "path is shorter than the tree is high");
  if (!equalBytes(r, root)) {
    throw new VerifyError("root_mismatch",
      `expected root ${bytesToHex(root)}, calculated ${bytesToHex(r)}`);
  }
}

// ------------------------------------------------------------------------------------------
// CBOR (RFC 8949): a strict decoder for the envelope subset, and the Sig_structure encoder
// ------------------------------------------------------------------------------------------

const malformed = (detail) => new VerifyError("malformed", detail);
const UTF8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }); // keep a BOM: it is data

/** A decoded floating-point number, kept apart from integers: 7.0 must not pass for seq 7. */
export class Float {
  constructor(value) { this.value = value; }
  toString() { return String(this.value); }
  toJSON() { return this.value; }
}

/** Integers and floats as plain numbers (BigInt for large integers), for display. */
export const plain = (v) => (v instanceof Float ? v.value
  : Array.isArray(v) ? v.map(plain)
    : v instanceof Map ? new Map([...v].map(([k, x]) => [k, plain(x)]))
      : v);

// The canonical form (DESIGN.md "Envelope wire format"): RFC 8949 section 4.2.1 deterministic
// encoding. The reader notes the first departure from it (`spelling`) and goes on decoding, so
// that a structural error still wins (malformed), as in anchor/envelope.py.
class CborReader {
  constructor(bytes) {
    this.b = bytes;
    this.pos = 0;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.spelling = null;
  }

  notCanonical(why) {
    if (this.spelling === null) this.spelling = why;
  }

  need(n) {
    if (n > this.b.length - this.pos) throw malformed("CBOR item runs past the end");
  }

  argument(ai) {
    if (ai < 24) return ai;
    const size = { 24: 1, 25: 2, 26: 4, 27: 8 }[ai];
    if (size === undefined) throw malformed(ai === 31 ? "indefinite lengths are not allowed"
                                                      : "reserved CBOR additional information");
    this.need(size);
    const at = this.pos;
    this.pos += size;
    let value;
    if (size === 1) value = this.view.getUint8(at);
    else if (size === 2) value = this.view.getUint16(at);
    else if (size === 4) value = this.view.getUint32(at);
    else {
      const big = this.view.getBigUint64(at);
      value = big <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(big) : big;
    }
    // Shortest head: 0..23 in the initial byte, then 1, 2, 4, 8 bytes only when needed.
    const least = { 1: 24, 2: 0x100, 4: 0x10000, 8: 0x100000000 }[size];
    if (value < least) this.notCanonical(`a ${size}-byte argument ${value} (not the shortest head)`);
    return value;
  }

  item(depth) {
    this.need(1);
    const ib = this.b[this.pos++];
    const major = ib >> 5, ai = ib & 31;
    if (major === 7) return this.simple(ai);
    const arg = this.argument(ai);
    switch (major) {
      case 0: return arg;
      case 1: return typeof arg === "bigint" ? -1n - arg : -1 - arg;
      case 2: case 3: {
        if (typeof arg === "bigint") throw malformed("CBOR string too long");
        this.need(arg);
        const bytes = this.b.slice(this.pos, this.pos + arg);
        this.pos += arg;
        if (major === 2) return bytes;
        try {
          return UTF8.decode(bytes);
        } catch {
          throw malformed("CBOR text is not valid UTF-8");
        }
      }
      case 4: case 5: {
        if (depth + 1 > MAX_DEPTH) throw malformed(`CBOR nests deeper than ${MAX_DEPTH}`);
        if (typeof arg === "bigint" || arg > this.b.length - this.pos) {
          throw malformed("CBOR container longer than its data");
        }
        if (major === 4) {
          const out = [];
          for (let i = 0; i < arg; i++) out.push(this.item(depth + 1));
          return out;
        }
        const out = new Map();
        const seen = new Set();
        let previous = null;
        for (let i = 0; i < arg; i++) {
          const start = this.pos;
          const key = this.item(depth + 1);
          // Keys in the bytewise order of their encodings (RFC 8949 section 4.2.1).
          const encoded = this.b.subarray(start, this.pos);
          if (previous !== null && compareBytes(previous, encoded) >= 0) {
            this.notCanonical("map keys not in bytewise order of their encodings");
          }
          previous = encoded;
          const id = `${typeof key}:${key instanceof Uint8Array ? bytesToHex(key) : String(key)}`;
          if (seen.has(id)) throw malformed("duplicate CBOR map key");
          seen.add(id);
          out.set(key, this.item(depth + 1));
        }
        return out;
      }
      default: // 6: tags; only the leading COSE_Sign1 tag 18 is allowed, and it is removed first.
        throw malformed("CBOR tags are not allowed here");
    }
  }

  simple(ai) {
    if (ai === 20) return false;
    if (ai === 21) return true;
    if (ai === 22) return null;
    let value;
    if (ai === 25) { this.need(2); value = halfToFloat(this.view.getUint16(this.pos)); this.pos += 2; }
    else if (ai === 26) { this.need(4); value = this.view.getFloat32(this.pos); this.pos += 4; }
    else if (ai === 27) { this.need(8); value = this.view.getFloat64(this.pos); this.pos += 8; }
    else throw malformed("CBOR simple value or break is not allowed");
    if (!Number.isFinite(value)) throw malformed("NaN or infinity is not allowed");
    // Preferred serialization: the shortest float that keeps the value.
    if (ai === 26 && fitsHalf(value)) this.notCanonical("a single-precision float that fits in half precision");
    if (ai === 27 && Object.is(Math.fround(value), value)) {
      this.notCanonical("a double-precision float that fits in single precision");
    }
    return new Float(value);
  }
}

/** Whether a finite number is exactly an IEEE 754 half-precision value (-0 included). */
function fitsHalf(v) {
  const a = Math.abs(v);
  if (a === 0) return true;
  if (a > 65504) return false;
  // Halves are m * 2**-24 with an 11-bit m (subnormals and the lowest binade) or m * 2**(e-10)
  // with 1024 <= m < 2048: in all cases an integer multiple of 2**-24 whose odd part has at
  // most 11 bits. Scaling by a power of two is exact here.
  let m = a * 2 ** 24;
  if (!Number.isInteger(m)) return false;
  while (m >= 2048 && m % 2 === 0) m /= 2;
  return m < 2048;
}

function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return a[i] - b[i];
  return a.length - b.length;
}

function halfToFloat(h) {
  const exp = (h >> 10) & 0x1f, mant = h & 0x3ff, sign = h & 0x8000 ? -1 : 1;
  if (exp === 0) return sign * mant * 2 ** -24;
  if (exp === 31) return mant ? NaN : sign * Infinity;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Decode exactly one CBOR item (no trailing bytes). */
export function cborDecode(bytes, what) {
  return cborDecodeSpelling(bytes, what)[0];
}

/** [item, null or why the encoding is not RFC 8949 deterministic]; throws VerifyError. */
function cborDecodeSpelling(bytes, what) {
  const reader = new CborReader(bytes);
  let item;
  try {
    item = reader.item(0);
  } catch (err) {
    throw err instanceof VerifyError ? malformed(`${what}: ${err.message}`) : err;
  }
  if (reader.pos !== bytes.length) throw malformed(`${what} has ${bytes.length - reader.pos} trailing bytes`);
  return [item, reader.spelling && `${what} is not deterministically encoded CBOR: ${reader.spelling}`];
}

const nonCanonical = (detail) => new VerifyError("non_canonical", detail);

/** ES256 signatures (r, s) and (r, n - s) both verify: only the low one is the canonical. */
function checkLowS(alg, signature) {
  if (alg !== "ES256") return;
  const s = BigInt("0x" + bytesToHex(signature.subarray(32)));
  if (s > P256_N / 2n) throw nonCanonical("ES256 signature is not low-S (s > n/2)");
}

function cborHead(major, n) {
  if (n < 24) return Uint8Array.of((major << 5) | n);
  if (n < 0x100) return Uint8Array.of((major << 5) | 24, n);
  if (n < 0x10000) return Uint8Array.of((major << 5) | 25, n >> 8, n & 0xff);
  return Uint8Array.of((major << 5) | 26, n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
}

/** RFC 9052 section 4.4: Sig_structure = ["Signature1", protected, external_aad = h'', payload]. */
export function sigStructure(protectedBytes, payloadBytes) {
  const context = utf8("Signature1");
  return concat(
    cborHead(4, 4),
    cborHead(3, context.length), context,
    cborHead(2, protectedBytes.length), protectedBytes,
    cborHead(2, 0),
    cborHead(2, payloadBytes.length), payloadBytes,
  );
}

// ------------------------------------------------------------------------------------------
// Envelopes: COSE_Sign1 (RFC 9052) and JWS compact (RFC 7515), DESIGN.md "Envelope wire format"
// ------------------------------------------------------------------------------------------

function readingFrom(payload, format) {
  // payload: a plain object with text keys; prev is bytes (COSE) or lowercase hex (JWS).
  for (const key of ["device_id", "seq", "ts", "kind", "values", "prev"]) {
    if (!(key in payload)) throw malformed(`payload lacks ${key}`);
  }
  const { device_id, seq, ts, kind, values } = payload;
  let prev = payload.prev;
  if (typeof device_id !== "string" || !/^[A-Za-z0-9._-]{1,64}$/.test(device_id)) {
    throw malformed("device_id does not match [A-Za-z0-9._-]{1,64}");
  }
  // Integers are numbers or BigInts, never Floats; both formats share CBOR's integer range.
  const uint = (v) => (typeof v === "bigint" || Number.isInteger(v)) && v >= 0 && v <= MAX_UINT;
  if (!uint(seq) || seq < 1) throw malformed("seq must be an unsigned integer >= 1");
  if (!uint(ts)) throw malformed("ts must be an unsigned integer");
  if (typeof kind !== "string" || !kind) throw malformed("kind must be non-empty text");
  if (!(values instanceof Map)) throw malformed("values must be a map");
  for (const v of values.values()) {
    if (!(v instanceof Float) && !["number", "string", "boolean", "bigint"].includes(typeof v)) {
      throw malformed("a value must be a number, text or bool");
    }
  }
  const texts = (v) => (typeof v === "string" ? [v] : Array.isArray(v) ? v.flatMap(texts)
    : v instanceof Map ? [...v].flat().flatMap(texts)
      : v && typeof v === "object" && v.constructor === Object ? Object.entries(v).flat().flatMap(texts) : []);
  if (!texts(payload).every((t) => t.isWellFormed())) throw malformed("text is not valid Unicode");
  if (format === "jws") {
    if (typeof prev !== "string" || !/^[0-9a-f]{64}$/.test(prev)) {
      throw malformed("prev must be 64 lowercase hex digits");
    }
    prev = hexToBytes(prev);
  } else if (!(prev instanceof Uint8Array)) {
    throw malformed("prev must be a byte string");
  }
  if (prev.length !== 32) throw malformed("prev must be 32 bytes");
  if (Number(seq) === 1 && prev.some((b) => b !== 0)) throw malformed("prev must be zero for seq 1");
  const extra = Object.fromEntries(Object.entries(payload).filter(
    ([k]) => !["device_id", "seq", "ts", "kind", "values", "prev"].includes(k)).map(([k, v]) => [k, plain(v)]));
  return { device_id, seq, ts, kind, values: mapToObject(plain(values), "values"), prev: bytesToHex(prev), extra };
}

function mapToObject(map, what) {
  if (!(map instanceof Map)) throw malformed(`${what} must be a map`);
  const out = {};
  for (const [k, v] of map) {
    if (typeof k !== "string") throw malformed(`${what} has a key that is not text`);
    // defineProperty: a "__proto__" key is an own property, as JSON.parse makes it.
    Object.defineProperty(out, k, { value: v, enumerable: true, writable: true, configurable: true });
  }
  return out;
}

function parseCose(raw) {
  const body = raw[0] === 0xd2 ? raw.subarray(1) : raw;
  const [msg, bodySpelling] = cborDecodeSpelling(body, "COSE_Sign1 message");
  if (!Array.isArray(msg) || msg.length !== 4) throw malformed("COSE_Sign1 must be an array of 4 items");
  const [protectedBytes, unprotected, payloadBytes, signature] = msg;
  if (!(protectedBytes instanceof Uint8Array)) throw malformed("COSE protected header must be a byte string");
  if (!(unprotected instanceof Map)) throw malformed("COSE unprotected header must be a map");
  if (!(payloadBytes instanceof Uint8Array)) throw malformed("COSE payload must be an attached byte string");
  if (!(signature instanceof Uint8Array)) throw malformed("COSE signature must be a byte string");
  const [prot, protSpelling] = protectedBytes.length
    ? cborDecodeSpelling(protectedBytes, "COSE protected header") : [new Map(), null];
  if (!(prot instanceof Map)) throw malformed("COSE protected header must be a map");
  for (const label of [1, 2, 4]) {
    if (unprotected.has(label)) throw malformed(`COSE header ${label} must be in the protected header`);
  }
  for (const label of prot.keys()) {
    if (unprotected.has(label)) throw malformed("a COSE header label is in both buckets");
  }
  if (prot.has(2)) {
    const crit = prot.get(2);
    if (!Array.isArray(crit) || !crit.length) throw malformed("COSE crit must be a non-empty array");
    if (crit.some((c) => c !== 1 && c !== 4)) {
      throw new VerifyError("unsupported_header", "COSE critical header not supported");
    }
  }
  if (!prot.has(1)) throw malformed("COSE protected header lacks alg");
  const alg = COSE_ALGS.get(prot.get(1));
  if (!alg) throw new VerifyError("alg_not_allowed", `COSE alg ${String(prot.get(1)).slice(0, 20)} is not allowed`);
  const kid = prot.get(4);
  if (!(kid instanceof Uint8Array) || kid.length !== 32) {
    throw malformed("COSE protected header needs kid, a 32-byte thumbprint");
  }
  if (signature.length !== 64) throw malformed(`signature must be 64 bytes, got ${signature.length}`);
  const [payloadMap, payloadSpelling] = cborDecodeSpelling(payloadBytes, "COSE payload");
  const payload = mapToObject(payloadMap, "COSE payload");
  const reading = readingFrom(payload, "cose-sign1");
  // The canonical form, last and in anchor/envelope.py's order: tag 18, an empty unprotected
  // header (nothing in it is signed), deterministic CBOR throughout, low-S.
  if (raw[0] !== 0xd2) throw nonCanonical("COSE_Sign1 must carry tag 18");
  if (unprotected.size) throw nonCanonical("COSE unprotected header must be an empty map");
  for (const spelling of [bodySpelling, protSpelling, payloadSpelling]) {
    if (spelling) throw nonCanonical(spelling);
  }
  checkLowS(alg, signature);
  return {
    format: "cose-sign1", alg, kid, signature, reading,
    signedBytes: sigStructure(protectedBytes, payloadBytes),
  };
}

/**
 * A strict JSON (RFC 8259) parser for envelope headers and payloads: objects become Maps (a
 * duplicate member name is malformed), integers numbers or BigInts within CBOR's range, other
 * numbers Floats; depth is bounded. JSON.parse cannot tell 7.0 from 7 nor see duplicates.
 */
class JsonReader {
  constructor(text) { this.t = text; this.pos = 0; }

  fail(why) { throw malformed(`${why} at offset ${this.pos}`); }

  ws() { while (" \t\n\r".includes(this.t[this.pos]) && this.pos < this.t.length) this.pos++; }

  token(re) {
    re.lastIndex = this.pos;
    const m = re.exec(this.t);
    if (!m) return null;
    this.pos += m[0].length;
    return m[0];
  }

  value(depth) {
    this.ws();
    const c = this.t[this.pos];
    if (c === "{" || c === "[") {
      if (depth + 1 > MAX_DEPTH) this.fail(`nests deeper than ${MAX_DEPTH}`);
      this.pos++;
      const obj = c === "{" ? new Map() : [];
      this.ws();
      if (this.t[this.pos] === (c === "{" ? "}" : "]")) { this.pos++; return obj; }
      for (;;) {
        if (c === "{") {
          this.ws();
          const key = this.string();
          if (key === null) this.fail("expected a member name");
          if (obj.has(key)) this.fail("duplicate member name");
          this.ws();
          if (this.t[this.pos++] !== ":") this.fail("expected ':'");
          obj.set(key, this.value(depth + 1));
        } else {
          obj.push(this.value(depth + 1));
        }
        this.ws();
        const next = this.t[this.pos++];
        if (next === (c === "{" ? "}" : "]")) return obj;
        if (next !== ",") this.fail("expected ','");
      }
    }
    const str = this.string();
    if (str !== null) return str;
    const num = this.token(/-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/y);
    if (num !== null) {
      if (!/[.eE]/.test(num)) {
        const big = BigInt(num);
        if (big > MAX_UINT || big < -(2n ** 64n)) this.fail("integer outside the CBOR range");
        return Number.isSafeInteger(Number(big)) ? Number(big) : big;
      }
      const f = Number(num);
      if (!Number.isFinite(f)) this.fail("number overflows to infinity");
      return new Float(f);
    }
    for (const [word, v] of [["true", true], ["false", false], ["null", null]]) {
      if (this.t.startsWith(word, this.pos)) { this.pos += word.length; return v; }
    }
    return this.fail("not a JSON value");
  }

  string() {
    const tok = this.token(/"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y);
    return tok === null ? null : JSON.parse(tok);
  }
}

function jsonObject(bytes, what) {
  let text;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw malformed(`${what} is not valid UTF-8`);
  }
  let obj;
  try {
    const reader = new JsonReader(text);
    obj = reader.value(0);
    reader.ws();
    if (reader.pos !== text.length) reader.fail("trailing data");
  } catch (err) {
    throw err instanceof VerifyError ? malformed(`${what} is not valid JSON: ${err.message}`) : err;
  }
  if (!(obj instanceof Map)) throw malformed(`${what} must be a JSON object`);
  return obj;
}

/**
 * A JWS segment: [bytes, canonical]. Padding and non-zero trailing bits, which lenient decoders
 * take, decode with canonical false (non_canonical, after the structural checks); anything
 * else that is not base64url is malformed.
 */
function segmentSpelling(text, what) {
  const m = /^([A-Za-z0-9_-]*)(={0,2})$/.exec(text);
  if (!m) malformedSegment(what);
  const [, body, padding] = m;
  if (body.length % 4 === 1 || (padding && padding.length !== (4 - body.length % 4) % 4)) {
    malformedSegment(what);
  }
  const std = body.replace(/-/g, "+").replace(/_/g, "/") + "==".slice(0, (4 - body.length % 4) % 4);
  const bytes = Uint8Array.from(atob(std), (c) => c.charCodeAt(0)); // forgiving: ignores stray bits
  return [bytes, !padding && b64urlEncode(bytes) === body];
}

function parseJws(raw) {
  const text = new TextDecoder("ascii").decode(raw);
  const parts = text.split(".");
  const [h64, p64, s64] = parts;
  const segments = [[h64, "protected header"], [p64, "payload"], [s64, "signature"]]
    .map(([t, what]) => [...segmentSpelling(t, what), what]);
  const [[headerBytes], [payloadBytes], [signature]] = segments;
  const header = mapToObject(plain(jsonObject(headerBytes, "JWS protected header")), "JWS protected header");
  if ("crit" in header) {
    // RFC 7515 section 4.1.11: a non-empty array of names; we implement no extensions.
    const crit = header.crit;
    if (!Array.isArray(crit) || !crit.length || !crit.every((c) => typeof c === "string")) {
      throw malformed("JWS crit must be a non-empty array of names");
    }
    throw new VerifyError("unsupported_header", "JWS critical headers are not supported");
  }
  if ("b64" in header && header.b64 !== true) {
    throw new VerifyError("unsupported_header", "JWS b64 header (RFC 7797) is not supported");
  }
  if (!("alg" in header)) throw malformed("JWS protected header lacks alg");
  if (!Object.hasOwn(ALG_KEY, header.alg)) {
    throw new VerifyError("alg_not_allowed", `JWS alg ${JSON.stringify(header.alg).slice(0, 20)} is not allowed`);
  }
  const kid = typeof header.kid === "string" ? b64urlDecode(header.kid) : null;
  if (!kid || kid.length !== 32) throw malformed("JWS protected header needs kid, a 32-byte thumbprint");
  if (!payloadBytes.length) throw malformed("detached JWS payloads are not supported");
  if (signature.length !== 64) throw malformed(`signature must be 64 bytes, got ${signature.length}`);
  const payload = mapToObject(jsonObject(payloadBytes, "JWS payload"), "JWS payload");
  const reading = readingFrom(payload, "jws");
  // The canonical form, last and in anchor/envelope.py's order.
  for (const [, canonical, what] of segments) {
    if (!canonical) throw nonCanonical(`JWS ${what} is not canonical base64url (padding or trailing bits)`);
  }
  checkLowS(header.alg, signature);
  return {
    format: "jws", alg: header.alg, kid, signature, reading,
    signedBytes: utf8(`${h64}.${p64}`),   // RFC 7515 section 5.2: ASCII(header "." payload)
  };
}

function malformedSegment(what) {
  throw malformed(`JWS ${what} is not unpadded base64url`);
}

/** Parse an envelope (bounded, no cryptography); throws VerifyError. */
export function parseEnvelope(raw) {
  if (raw.length > MAX_ENVELOPE_BYTES) {
    throw new VerifyError("oversized", `envelope is ${raw.length} bytes, more than ${MAX_ENVELOPE_BYTES}`);
  }
  if (!raw.length) throw malformed("empty envelope");
  if (raw[0] === 0xd2 || raw[0] === 0x84) return parseCose(raw);
  const ascii = raw.every((b) => b < 0x80);
  if (ascii && raw.filter((b) => b === 0x2e).length === 2) return parseJws(raw);
  throw malformed("neither a COSE_Sign1 message nor a JWS compact serialization");
}

// ------------------------------------------------------------------------------------------
// Keys: JWK thumbprints (RFC 7638) and WebCrypto imports
// ------------------------------------------------------------------------------------------

/** The key type a JWK names ("Ed25519" or "P-256"), or null. */
export function jwkType(jwk) {
  if (!jwk || typeof jwk !== "object") return null;
  if (jwk.kty === "OKP" && jwk.crv === "Ed25519" && typeof jwk.x === "string") return "Ed25519";
  if (jwk.kty === "EC" && jwk.crv === "P-256" && typeof jwk.x === "string" && typeof jwk.y === "string") {
    return "P-256";
  }
  return null;
}

/** RFC 7638 SHA-256 thumbprint: the required members, sorted, no whitespace. */
export async function jwkThumbprint(jwk) {
  const s = JSON.stringify;
  const text = jwkType(jwk) === "Ed25519"
    ? `{"crv":${s(jwk.crv)},"kty":${s(jwk.kty)},"x":${s(jwk.x)}}`
    : `{"crv":${s(jwk.crv)},"kty":${s(jwk.kty)},"x":${s(jwk.x)},"y":${s(jwk.y)}}`;
  return sha256(utf8(text));
}

async function verifyWith(keyType, jwk, signature, data) {
  // Returns true/false, or throws VerifyError("unsupported_alg") if this browser lacks it.
  const params = keyType === "Ed25519"
    ? [{ name: "Ed25519" }, { name: "Ed25519" }]
    : [{ name: "ECDSA", namedCurve: "P-256" }, { name: "ECDSA", hash: "SHA-256" }];
  const clean = keyType === "Ed25519"
    ? { kty: "OKP", crv: "Ed25519", x: jwk.x }
    : { kty: "EC", crv: "P-256", x: jwk.x, y: jwk.y };
  let key;
  try {
    key = await subtle().importKey("jwk", clean, params[0], false, ["verify"]);
  } catch (err) {
    if (err instanceof VerifyError) throw err;
    if (err && err.name === "NotSupportedError") {
      throw new VerifyError("unsupported_alg", `this browser's WebCrypto has no ${keyType}`);
    }
    throw new VerifyError("key_invalid", `the key does not import: ${err && err.message}`);
  }
  // ECDSA in WebCrypto takes the raw r||s signature, which is what COSE and JWS carry.
  return subtle().verify(params[1], key, signature, data);
}

/** Parse a C2SP note verifier key name+hex(keyhash)+base64(0x01 || pub); throws VerifyError. */
export async function parseVkey(vkey) {
  const bad = (why) => new VerifyError("key_invalid", `operator key ${why}`);
  // The name has no "+"; the standard base64 key may well contain some.
  const text = typeof vkey === "string" ? vkey.trim() : "";
  const i = text.indexOf("+"), j = text.indexOf("+", i + 1);
  if (i <= 0 || j < 0) throw bad("is not name+keyhash+key");
  const [name, hash, b64] = [text.slice(0, i), text.slice(i + 1, j), text.slice(j + 1)];
  if (!/^[0-9a-f]{8}$/.test(hash)) throw bad("has no 8-digit hex key hash");
  const raw = b64Decode(b64);
  if (!raw || raw.length !== 33 || raw[0] !== 0x01) throw bad("is not an Ed25519 (0x01) key");
  const keyHash = (await sha256(concat(utf8(`${name}\n`), raw))).slice(0, 4);
  if (bytesToHex(keyHash) !== hash) throw bad("has a key hash that does not match its key");
  return { name, keyHash, publicKey: raw.slice(1) };
}

/**
 * Parse a witness's cosignature verifier key name+hex(keyid)+base64(0x04 || pub)
 * (C2SP tlog-cosignature v1, Ed25519); throws VerifyError.
 */
export async function parseWitnessVkey(vkey) {
  const bad = (why) => new VerifyError("key_invalid", `witness key ${why}`);
  const text = typeof vkey === "string" ? vkey.trim() : "";
  const i = text.indexOf("+"), j = text.indexOf("+", i + 1);
  if (i <= 0 || j < 0) throw bad("is not name+keyid+key");
  const [name, hash, b64] = [text.slice(0, i), text.slice(i + 1, j), text.slice(j + 1)];
  if (!/^[0-9a-f]{8}$/.test(hash)) throw bad("has no 8-digit hex key ID");
  const raw = b64Decode(b64);
  if (!raw || raw.length !== 33 || raw[0] !== 0x04) throw bad("is not a cosignature/v1 (0x04) key");
  const keyHash = (await sha256(concat(utf8(`${name}\n`), raw))).slice(0, 4);
  if (bytesToHex(keyHash) !== hash) throw bad("has a key ID that does not match its key");
  return { name, keyHash, publicKey: raw.slice(1) };
}

// ------------------------------------------------------------------------------------------
// Checkpoints: C2SP signed-note + tlog-checkpoint
// ------------------------------------------------------------------------------------------

/** Split a signed note and parse its checkpoint body (no signature check); throws VerifyError. */
export function parseCheckpoint(note) {
  const bad = (why) => new VerifyError("checkpoint_malformed", why);
  if (typeof note !== "string") throw bad("checkpoint is not text");
  if (/[\x00-\x09\x0b-\x1f]/.test(note)) throw bad("note contains a control character");
  const split = note.lastIndexOf("\n\n");
  if (split < 0) throw bad("note has no blank line before its signatures");
  const text = note.slice(0, split + 1);
  const block = note.slice(split + 2);
  if (!block.endsWith("\n")) throw bad("note has no signature lines ending with a newline");
  const signatures = block.slice(0, -1).split("\n").map((line, i) => {
    if (!line.startsWith(SIG_PREFIX)) throw bad(`signature line ${i + 1} does not start with an em dash`);
    const [name, b64, more] = line.slice(SIG_PREFIX.length).split(" ");
    const raw = b64Decode(b64 ?? "");
    if (!name || more !== undefined || !raw || raw.length <= 4) throw bad(`signature line ${i + 1} is malformed`);
    return { name, keyHash: raw.slice(0, 4), signature: raw.slice(4) };
  });
  const lines = text.slice(0, -1).split("\n");
  if (lines.length < 3) throw bad("checkpoint needs origin, size and root lines");
  const [origin, sizeText, rootText] = lines;
  if (!origin) throw bad("checkpoint origin is empty");
  if (!/^(?:0|[1-9][0-9]{0,19})$/.test(sizeText) || BigInt(sizeText) >= 2n ** 64n) {
    throw bad(`checkpoint size is not a canonical decimal`);
  }
  const root = b64Decode(rootText);
  if (!root || root.length !== 32) throw bad("checkpoint root is not 32 bytes of canonical base64");
  return { origin, size: BigInt(sizeText), root, text, signatures };
}

// ------------------------------------------------------------------------------------------
// Receipts
// ------------------------------------------------------------------------------------------

/** Shape-check a receipt JSON object and decode its byte fields; throws VerifyError. */
export function parseReceipt(obj) {
  const bad = (why) => new VerifyError("receipt_malformed", why);
  const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
  const uint = (v, what) => {
    if (!Number.isSafeInteger(v) || v < 0) throw bad(`${what} must be an unsigned integer`);
    return v;
  };
  if (!isObj(obj)) throw bad("a receipt is a JSON object");
  if (obj.version === "cityanchor/receipt/v1") {
    // The same refusal, reason and words as anchor/receipt.py (RETIRED_VERSIONS).
    throw new VerifyError("receipt_version_retired",
      "cityanchor/receipt/v1 receipts are refused: their batch-log leaf does not bind "
      + "batch.size (and batch.id is bound by nothing), so a v1 receipt can be altered without "
      + "any check failing; only cityanchor/receipt/v2 receipts are verified");
  }
  if (obj.version !== RECEIPT_VERSION) {
    throw new VerifyError("receipt_version_unsupported", `version is not ${RECEIPT_VERSION}`);
  }
  for (const key of ["reading", "batch", "log"]) if (!isObj(obj[key])) throw bad(`${key} must be an object`);
  const { reading, batch, log } = obj;
  if ("id" in batch) {
    throw bad("batch.id is not part of cityanchor/receipt/v2 (nothing binds it; the batch is identified by log.index)");
  }
  if (typeof reading.device_id !== "string") throw bad("reading.device_id must be text");
  uint(reading.seq, "reading.seq");
  // "" is the envelope of a reading the operator erased (privacy law); only with that status.
  const envelope = b64urlDecode(reading.envelope);
  if (!envelope || (!envelope.length && obj.status !== "erased")) {
    throw bad("reading.envelope is not unpadded base64url");
  }
  const path = (v, what) => {
    if (!Array.isArray(v)) throw bad(`${what} must be a list`);
    return v.map((h, i) => hexToBytes(h, `${what}[${i}]`, 32));
  };
  if (typeof obj.checkpoint !== "string") throw bad("checkpoint must be text");
  if (!Array.isArray(obj.anchors)) throw bad("anchors must be a list");
  const anchors = obj.anchors.map((a, i) => {
    if (!isObj(a)) throw bad(`anchors[${i}] must be an object`);
    uint(a.chain_id, `anchors[${i}].chain_id`);
    uint(a.block_number, `anchors[${i}].block_number`);
    if (typeof a.contract !== "string" || !/^0x[0-9a-fA-F]{40}$/.test(a.contract)) {
      throw bad(`anchors[${i}].contract is not an address`);
    }
    if (typeof a.tx_hash !== "string" || typeof a.block_time !== "string") {
      throw bad(`anchors[${i}] needs tx_hash and block_time text`);
    }
    return a;
  });
  return {
    json: obj,
    deviceId: reading.device_id,
    seq: reading.seq,
    format: reading.format,
    envelope,
    leafHash: hexToBytes(obj.leaf_hash, "leaf_hash", 32),
    hashScheme: obj.hash_scheme ?? SHA256_SCHEME,
    batch: {
      size: uint(batch.size, "batch.size"), index: uint(batch.index, "batch.index"),
      root: hexToBytes(batch.root, "batch.root", 32), path: path(batch.path, "batch.path"),
    },
    log: {
      index: uint(log.index, "log.index"), size: uint(log.size, "log.size"),
      root: hexToBytes(log.root, "log.root", 32), path: path(log.path, "log.path"),
    },
    checkpoint: obj.checkpoint,
    anchors,
    status: obj.status,
  };
}

// ------------------------------------------------------------------------------------------
// The checks
// ------------------------------------------------------------------------------------------

/** The skip detail for an erased reading's receipt (no envelope), else null. */
function erasedDetail(r) {
  if (r.status !== "erased" || r.envelope.length) return null;
  const e = r.json.erasure;
  const info = e && typeof e === "object"
    ? ["erased_at", "erased_by", "legal_reason"].filter((k) => k in e)
      .map((k) => `${k} ${String(e[k]).slice(0, 200)}`).join(", ")
    : "";
  return `erased by the operator (tombstone${info ? ": " + info : ""})`;
}

function checkEnvelope(r) {
  const erased = erasedDetail(r);
  if (erased) return [check("envelope", "skip", erased), null];
  let env;
  try {
    env = parseEnvelope(r.envelope);
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    return [failed("envelope", err), null];
  }
  const rd = env.reading;
  const mismatches = [["device_id", r.deviceId, rd.device_id], ["seq", r.seq, Number(rd.seq)],
    ["format", r.format, env.format]]
    .filter(([, claimed, actual]) => claimed !== actual)
    .map(([f, claimed, actual]) => `${f}: receipt says ${JSON.stringify(claimed)}, envelope says ${JSON.stringify(actual)}`);
  if (mismatches.length) return [check("envelope", "fail", mismatches.join("; "), "receipt_mismatch"), env];
  return [check("envelope", "pass", `${env.format} ${env.alg}, kind ${rd.kind}`), env];
}

export async function checkSignature(env, deviceKeys, erased = null) {
  if (erased) return check("signature", "skip", erased);
  if (!env) return check("signature", "skip", "the envelope did not parse");
  if (!deviceKeys.keys.length) return check("signature", "skip", `no device key: ${deviceKeys.why}`);
  let match = null;
  for (const jwk of deviceKeys.keys) {
    if (jwkType(jwk) && equalBytes(await jwkThumbprint(jwk), env.kid)) { match = jwk; break; }
  }
  const kidHex = bytesToHex(env.kid);
  if (!match) {
    return check("signature", "fail",
      `no key of this device (${deviceKeys.source}) has kid ${kidHex}`, "unknown_kid");
  }
  const keyType = jwkType(match);
  if (ALG_KEY[env.alg] !== keyType) {
    return check("signature", "fail", `alg ${env.alg} needs a ${ALG_KEY[env.alg]} key, not ${keyType}`,
      "alg_key_mismatch");
  }
  try {
    if (!(await verifyWith(keyType, match, env.signature, env.signedBytes))) {
      return check("signature", "fail", `the ${env.alg} signature does not verify with kid ${kidHex.slice(0, 16)}…`,
        "bad_signature");
    }
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    if (err.reason === "unsupported_alg" || err.reason === "no_webcrypto") {
      return check("signature", "skip", err.message);
    }
    return failed("signature", err);
  }
  return check("signature", "pass",
    `${env.alg} signature by kid ${kidHex.slice(0, 16)}… (key from ${deviceKeys.source})`);
}

async function checkProofs(r) {
  if (r.hashScheme !== SHA256_SCHEME) {
    const why = `hash scheme ${JSON.stringify(String(r.hashScheme)).slice(0, 30)} is not available in this browser`;
    return ["leaf_hash", "batch_path", "log_path"].map((n) => check(n, "skip", why));
  }
  const out = [];
  const erased = erasedDetail(r);
  // An erased reading has no envelope to hash: its leaf_hash is what the batch path proves.
  const leaf = erased ? r.leafHash : await leafHash(r.envelope);
  out.push(erased ? check("leaf_hash", "skip", erased) : equalBytes(leaf, r.leafHash)
    ? check("leaf_hash", "pass", bytesToHex(leaf))
    : check("leaf_hash", "fail", `expected ${bytesToHex(r.leafHash)}, calculated ${bytesToHex(leaf)}`,
      "leaf_mismatch"));
  const b = r.batch;
  try {
    await verifyInclusion(leaf, b.index, b.size, b.path, b.root);
    out.push(check("batch_path", "pass", `leaf ${b.index} of ${b.size} in batch root ${bytesToHex(b.root).slice(0, 16)}…`));
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    out.push(failed("batch_path", err));
  }
  const lg = r.log;
  try {
    // The log leaf binds the batch size: a receipt whose batch.size was changed fails here.
    await verifyInclusion(await logLeafHash(b.size, b.root), lg.index, lg.size, lg.path, lg.root);
    out.push(check("log_path", "pass", `batch (size ${b.size}) at ${lg.index} of ${lg.size} in the log`));
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    out.push(failed("log_path", err));
  }
  return out;
}

async function checkCheckpoint(r, operatorKeys) {
  let cp;
  try {
    cp = parseCheckpoint(r.checkpoint);
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    return [failed("checkpoint", err), check("checkpoint_signature", "skip", "the checkpoint did not parse")];
  }
  const structural = cp.size === BigInt(r.log.size) && equalBytes(cp.root, r.log.root)
    ? check("checkpoint", "pass", `${JSON.stringify(cp.origin)} at size ${cp.size}`)
    : check("checkpoint", "fail",
      `checkpoint names size ${cp.size} root ${bytesToHex(cp.root)}, receipt's log has size `
      + `${r.log.size} root ${bytesToHex(r.log.root)}`, "checkpoint_mismatch");
  if (!operatorKeys.keys.length) {
    return [structural, check("checkpoint_signature", "skip", `no operator key: ${operatorKeys.why}`)];
  }
  const message = utf8(cp.text);
  let verified = null;
  try {
    for (const vk of operatorKeys.keys) {
      for (const sig of cp.signatures) {
        if (sig.name !== vk.name || !equalBytes(sig.keyHash, vk.keyHash)) continue;
        const ok = sig.signature.length === 64
          && await verifyWith("Ed25519", { x: b64urlEncode(vk.publicKey) }, sig.signature, message);
        if (!ok) {
          return [structural, check("checkpoint_signature", "fail",
            `the signature line of ${JSON.stringify(vk.name)} does not verify`, "checkpoint_signature_invalid")];
        }
        verified = vk;
      }
    }
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    return [structural, err.reason === "unsupported_alg" || err.reason === "no_webcrypto"
      ? check("checkpoint_signature", "skip", err.message) : failed("checkpoint_signature", err)];
  }
  if (!verified) {
    const present = cp.signatures.map((s) => `${s.name}+${bytesToHex(s.keyHash)}`).join(", ");
    return [structural, check("checkpoint_signature", "fail",
      `no signature from the operator key (present: ${present})`, "checkpoint_unknown_key")];
  }
  return [structural, check("checkpoint_signature", "pass",
    `signed by ${verified.name}+${bytesToHex(verified.keyHash)} (key from ${operatorKeys.source})`)];
}

const MAX_COSIGNATURE_TIME = 2n ** 63n - 1n;
const utcSeconds = (ts) => new Date(Number(ts) * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");

/**
 * The witnesses check (anchor/verify.py check_witnesses): `quorum` distinct trusted witnesses
 * must have validly cosigned the checkpoint note (C2SP tlog-cosignature v1: the signed message
 * is "cosignature/v1\ntime <ts>\n" + the note text). A trusted key's bad line fails the check,
 * lines of unknown keys are ignored, no key at all is a skip, never a pass.
 * witnessKeys: {keys: [parsed witness vkeys], why}. Returns one check.
 */
export async function checkWitnesses(note, witnessKeys, quorum = 1) {
  if (!witnessKeys.keys.length) return check("witnesses", "skip", `no witness key: ${witnessKeys.why}`);
  let cp;
  try {
    cp = parseCheckpoint(note);
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    return failed("witnesses", err);
  }
  const trusted = new Map(witnessKeys.keys.map((k) => [`${k.name}+${bytesToHex(k.keyHash)}`, k]));
  const found = new Map();
  try {
    for (const sig of cp.signatures) {
      const id = `${sig.name}+${bytesToHex(sig.keyHash)}`;
      const wk = trusted.get(id);
      if (!wk) continue;
      const invalid = (why) => check("witnesses", "fail", `cosignature by witness ${id} ${why}`,
        "witness_cosignature_invalid");
      if (sig.signature.length !== 72) return invalid("is not 4+8+64 bytes");
      let ts = 0n;
      for (const b of sig.signature.slice(0, 8)) ts = (ts << 8n) | BigInt(b);
      if (ts === 0n || ts > MAX_COSIGNATURE_TIME) return invalid("has a timestamp outside [1, 2**63)");
      const message = utf8(`cosignature/v1\ntime ${ts}\n${cp.text}`);
      const ok = await verifyWith("Ed25519", { x: b64urlEncode(wk.publicKey) }, sig.signature.slice(8), message);
      if (!ok) return invalid("does not verify");
      if (!found.has(id) || found.get(id) < ts) found.set(id, ts);
    }
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    return err.reason === "unsupported_alg" || err.reason === "no_webcrypto"
      ? check("witnesses", "skip", err.message) : failed("witnesses", err);
  }
  const names = [...found].map(([id, ts]) => `${id} at ${utcSeconds(ts)}`).join(", ") || "none";
  if (found.size < quorum) {
    return check("witnesses", "fail", `${found.size} of the ${trusted.size} trusted witnesses `
      + `cosigned, the quorum is ${quorum}; cosigned by: ${names}`, "witness_quorum_not_met");
  }
  return check("witnesses", "pass", `${found.size} of ${quorum} needed, cosigned by: ${names}`);
}

async function rpc(url, method, params, timeoutMs) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  let resp;
  try {
    resp = await fetch(url, {
      method: "POST", headers: { "Content-Type": "application/json" }, signal: abort.signal,
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method, params }), credentials: "omit",
    });
  } catch (err) {
    throw new VerifyError("chain_unavailable", `${method}: the endpoint is unreachable (network, CORS or timeout)`);
  } finally {
    clearTimeout(timer);
  }
  if (!resp.ok) throw new VerifyError("chain_unavailable", `${method}: HTTP ${resp.status}`);
  const body = await resp.json().catch(() => null);
  if (!body || body.error || !("result" in body)) {
    throw new VerifyError("chain_unavailable", `${method}: ${body && body.error ? "error " + String(body.error.message).slice(0, 80) : "no result"}`);
  }
  return body.result;
}

const hexQuantity = (v, what) => {
  if (typeof v !== "string" || !/^0x[0-9a-fA-F]{1,64}$/.test(v)) {
    throw new VerifyError("chain_unavailable", `${what} is not a hex quantity`);
  }
  return BigInt(v);
};

async function checkOneAnchor(a, logRoot, chains, timeoutMs) {
  const chain = chains.find((c) => c.chain_id === a.chain_id);
  const where = `chain ${a.chain_id} block ${a.block_number}`;
  if (!chain || !chain.rpc_url) return ["skip", `${where}: no JSON-RPC endpoint for chain ${a.chain_id} (the server publishes none; give your own)`];
  try {
    const id = hexQuantity(await rpc(chain.rpc_url, "eth_chainId", [], timeoutMs), "eth_chainId");
    if (id !== BigInt(a.chain_id)) {
      return ["skip", `${where}: the configured endpoint serves chain ${id}, not ${a.chain_id}`];
    }
    const data = ANCHORED_AT + bytesToHex(logRoot);
    const at = hexQuantity(await rpc(chain.rpc_url, "eth_call",
      [{ to: a.contract, data }, "latest"], timeoutMs), "anchoredAt result");
    if (at === 0n) {
      return ["fail", `${where}: anchoredAt(log.root) on ${a.contract} is 0: log root not anchored`, "anchor_missing"];
    }
    if (at !== BigInt(a.block_number)) {
      return ["fail", `${where}: anchored at block ${at}, receipt says ${a.block_number}`, "anchor_block_mismatch"];
    }
    const block = await rpc(chain.rpc_url, "eth_getBlockByNumber", ["0x" + at.toString(16), false], timeoutMs);
    if (!block) throw new VerifyError("chain_unavailable", `block ${at} is not available`);
    const ts = hexQuantity(block.timestamp, "block timestamp");
    // The same spelling as the receipt (and anchor.anchoring.backend._rfc3339): seconds, "Z".
    const actual = new Date(Number(ts) * 1000).toISOString().replace(/\.\d{3}Z$/, "Z");
    if (actual !== a.block_time) {
      return ["fail", `${where}: block ${at} is from ${actual}, receipt says ${a.block_time}`, "anchor_time_mismatch"];
    }
    return ["pass", `${where} on ${chain.name || "chain " + a.chain_id}: anchoredAt(log.root) = ${at}, time ${a.block_time}`];
  } catch (err) {
    if (!(err instanceof VerifyError)) throw err;
    return ["skip", `${where}: ${err.message}`];
  }
}

async function checkAnchors(r, chains, timeoutMs) {
  if (!r.anchors.length) return check("anchors", "skip", `status ${r.status}: not anchored yet`);
  const results = [];
  for (const a of r.anchors) results.push(await checkOneAnchor(a, r.log.root, chains, timeoutMs));
  // One anchor: its detail alone (the row already shows the status). Several: each line says
  // which of them passed, failed or was skipped.
  const detail = results.length === 1 ? results[0][1]
    : results.map(([s, d], i) => `anchor ${i + 1} (${s === "skip" ? "skipped" : s}): ${d}`).join("\n");
  const fail = results.find(([s]) => s === "fail");
  if (fail) return check("anchors", "fail", detail, fail[2]);
  if (results.some(([s]) => s === "pass")) return check("anchors", "pass", detail);
  return check("anchors", "skip", detail);
}

/**
 * Run every check on a parsed receipt.
 *
 * deviceKeys:   {keys: [JWK], source, why}  (why: the reason there are none)
 * operatorKeys: {keys: [parsed vkeys], source, why}
 * chains:       [{name, chain_id, rpc_url}]
 * witnessKeys:  {keys: [parsed witness vkeys], why}; witnessQuorum: distinct cosigners needed
 * Returns {checks, envelope}; never throws for a bad receipt.
 */
export async function verifyReceipt(r, {
  deviceKeys, operatorKeys, chains, timeoutMs = 5000,
  witnessKeys = { keys: [], why: "none configured" }, witnessQuorum = 1,
}) {
  const checks = [];
  const [envCheck, env] = checkEnvelope(r);
  checks.push(envCheck);
  const guard = async (names, fn) => {
    try {
      return await fn();
    } catch (err) {
      if (err instanceof VerifyError && err.reason === "no_webcrypto") {
        return names.map((n) => check(n, "skip", err.message));
      }
      return names.map((n) => check(n, "fail", `unexpected error: ${err && err.message}`, "internal"));
    }
  };
  checks.push(...await guard(["signature"], async () => [await checkSignature(env, deviceKeys, erasedDetail(r))]));
  checks.push(...await guard(["leaf_hash", "batch_path", "log_path"], () => checkProofs(r)));
  checks.push(...await guard(["checkpoint", "checkpoint_signature"], () => checkCheckpoint(r, operatorKeys)));
  checks.push(...await guard(["witnesses"], async () => [await checkWitnesses(r.checkpoint, witnessKeys, witnessQuorum)]));
  checks.push(...await guard(["anchors"], async () => [await checkAnchors(r, chains, timeoutMs)]));
  return { checks, envelope: env };
}
