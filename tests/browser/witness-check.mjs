// Run the explorer's witnesses check (verify.js checkWitnesses) on the cases of a JSON file:
// [{note, vkeys: [witness vkey], quorum}] -> prints one JSON line, [{status, reason, detail}].
// tests/unit/test_explorer_witnesses.py compares the answers with anchor/verify.py.

import { readFileSync } from "node:fs";
import { checkWitnesses, parseWitnessVkey } from "../../anchor/api/explorer/static/verify.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = [];
for (const c of cases) {
  const keys = await Promise.all(c.vkeys.map(parseWitnessVkey));
  const r = await checkWitnesses(c.note, { keys, why: "none given" }, c.quorum);
  out.push({ status: r.status, reason: r.reason, detail: r.detail });
}
console.log(JSON.stringify(out));
