// cityanchor proof explorer: the words. A plain-language line per check for readers who are not
// cryptographers, the verdict, and whose keys and which chain endpoint the checks used. No DOM
// access and no network here: every function takes data and returns data (Node runs them in
// tests/unit/test_explorer_explain.py). The check names and reason codes stay those of
// verify.js; this module only words them.

/** Which key or endpoint each check relies on (the check passes only with it). */
export const CHECK_SOURCE = {
  signature: "device", checkpoint_signature: "operator", witnesses: "witnesses", anchors: "rpc",
};

const WHAT = {
  device: "device key", operator: "operator key", witnesses: "witness keys", rpc: "chain endpoint",
};

/** "2026-01-31T12:00:00Z" as "31 Jan 2026, 12:00:00 UTC" (the text itself when unreadable). */
export function plainDate(rfc3339) {
  const d = new Date(rfc3339);
  if (typeof rfc3339 !== "string" || Number.isNaN(d.getTime())) return String(rfc3339 ?? "");
  const month = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
  const pad = (n) => String(n).padStart(2, "0");
  return `${d.getUTCDate()} ${month[d.getUTCMonth()]} ${d.getUTCFullYear()}, `
    + `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())} UTC`;
}

function signerName(note) {
  // The first signature line's key name (the operator's), without parsing the note again.
  const m = /\n\n\u2014 (\S+) /.exec(String(note ?? ""));
  return m ? m[1] : "the operator";
}

/**
 * One sentence for a check, in plain words: what was shown (pass), what is wrong (fail), or what
 * could not be looked at (skip). `r` is the parsed receipt (verify.js parseReceipt).
 */
export function explain(check, r) {
  const batch = `batch ${r.log.index}`;
  const device = `device ${r.deviceId}`;
  const s = check.status;
  const lines = {
    envelope: {
      pass: `The reading is an intact signed message from ${device} (reading number ${r.seq}).`,
      fail: "The signed message is damaged, or not the exact message the device sent.",
      skip: "There is no signed message to look at (the operator erased it).",
    },
    signature: {
      pass: `The device's signature matches: ${device} signed exactly these values.`,
      fail: "The device's signature does not match: these values were changed, or this device did not sign them.",
      skip: "The device's signature was not checked, so the values may not be the device's.",
    },
    leaf_hash: {
      pass: "The receipt's fingerprint of the reading matches the reading.",
      fail: "The reading does not match the fingerprint the receipt gives for it.",
      skip: "The reading's fingerprint could not be recomputed here.",
    },
    batch_path: {
      pass: `This reading is in ${batch} (reading ${r.batch.index + 1} of ${r.batch.size}).`,
      fail: `The receipt does not prove that this reading is in ${batch}.`,
      skip: `Whether this reading is in ${batch} was not checked.`,
    },
    log_path: {
      pass: `${cap(batch)} is in the city's log, which held ${r.log.size} batches at the time.`,
      fail: `The receipt does not prove that ${batch} is in the city's log.`,
      skip: `Whether ${batch} is in the city's log was not checked.`,
    },
    checkpoint: {
      pass: "The log the receipt refers to is the one named in the city's signed statement (checkpoint).",
      fail: "The receipt refers to a different log than the city's signed statement (checkpoint).",
      skip: "The city's signed statement (checkpoint) was not compared with the receipt.",
    },
    checkpoint_signature: {
      pass: `${cap(batch)} is in the log the city signed (signed by ${signerName(r.checkpoint)}).`,
      fail: "The city's signature on the log does not match the operator key.",
      skip: "The city's signature on the log was not checked.",
    },
    witnesses: {
      pass: `Independent witnesses${witnessNames(check.detail)} confirmed they saw this same log, so the city cannot show others a different one.`,
      fail: "The independent witnesses' confirmations are missing or do not match.",
      skip: "No independent witness was checked.",
    },
    anchors: anchorLines(r),
  };
  return (lines[check.name] ?? {})[s] ?? `${check.name}: ${s}`;
}

function witnessNames(detail) {
  // The cosigners named in the check's detail ("cosigned by: name+keyhash at time, ..."), so the
  // plain line still says who cosigned.
  const names = [...String(detail ?? "").matchAll(/(?:: |, )([^\s,+]+)\+[0-9a-f]{8} at /g)].map((m) => m[1]);
  return names.length ? ` (${names.join(", ")})` : "";
}

function anchorLines(r) {
  const a = r.anchors[0];
  const others = r.anchors.length > 1 ? ` (and on ${r.anchors.length - 1} more)` : "";
  return {
    pass: a
      ? `The log was written to the blockchain (chain ${a.chain_id}) at block ${a.block_number} on ${plainDate(a.block_time)}${others}; that record cannot be changed.`
      : "The log was written to a blockchain.",
    fail: "The blockchain does not confirm the record the receipt claims.",
    skip: r.anchors.length
      ? "The blockchain record was not checked (no chain endpoint could be asked)."
      : "The log has not been written to the blockchain yet.",
  };
}

const cap = (text) => text.charAt(0).toUpperCase() + text.slice(1);

/**
 * Where each key or endpoint came from. Each entry: {from: "user" | "server" | "none", label}.
 * `accepted`: the user explicitly accepted this server's keys and endpoint as trusted.
 * Returns [{key, what, from, text}] in a fixed order.
 */
export function trustLines(sources, accepted = false) {
  return ["device", "operator", "witnesses", "rpc"].map((key) => {
    const src = sources[key] ?? { from: "none", label: "" };
    const what = cap(WHAT[key]);
    let text;
    if (src.from === "user") text = `${what}: yours (${src.label}).`;
    else if (src.from === "server") {
      text = `${what}: from ${src.label}${accepted ? ", accepted by you" : ", not independent"}.`;
    } else text = `${what}: none${src.label ? ` (${src.label})` : ""}.`;
    return { key, what, from: src.from, text };
  });
}

/**
 * The verdict over the checks: {state: "pass" | "server" | "skip" | "fail", text, untrusted}.
 * "Fully verified" only when every check that passed on a key or endpoint used one the user
 * gave or explicitly accepted; with this server's own keys it says so instead. `untrusted`:
 * some check failed, so the reading's values must not be believed.
 */
export function verdict(checks, sources, accepted = false) {
  const failed = checks.filter((c) => c.status === "fail").map((c) => c.name);
  // Witnessing is opt-in: without witness keys its skip does not make the receipt "not fully
  // verified" (ReceiptReport.fully_verified in anchor/verify.py).
  const skipped = checks.filter((c) => c.status === "skip" && c.name !== "witnesses").map((c) => c.name);
  if (failed.length) {
    return {
      state: "fail", untrusted: true,
      text: `Not valid: ${failed.join(", ")} failed. Do not trust the reading's values.`,
    };
  }
  const fromServer = [...new Set(checks
    .filter((c) => c.status === "pass" && CHECK_SOURCE[c.name])
    .map((c) => CHECK_SOURCE[c.name])
    .filter((key) => (sources[key] ?? {}).from === "server"))];
  const serverWords = fromServer.map((k) => WHAT[k]).join(", ");
  if (skipped.length) {
    const note = fromServer.length && !accepted ? ` The ${serverWords} came from this server.` : "";
    return {
      state: "skip", untrusted: false,
      text: `Valid, not fully verified: ${skipped.join(", ")} skipped.${note}`,
    };
  }
  if (fromServer.length && !accepted) {
    return {
      state: "server", untrusted: false,
      text: `Every check passed in this browser, but with the ${serverWords} of this server: `
        + "this shows the receipt agrees with what the server says, not that the server is honest. "
        + "Give keys and a chain endpoint from another source (or accept these) for a full verification.",
    };
  }
  const whose = fromServer.length ? "you supplied or accepted" : "you supplied";
  return {
    state: "pass", untrusted: false,
    text: `Fully verified: every check passed in this browser, with keys and a chain endpoint ${whose}.`,
  };
}
