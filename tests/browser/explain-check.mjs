// Run the explorer's words (explain.js) on the cases of a JSON file and print one JSON line:
// {plain: {check: {status: line}}, verdicts: [{state, text, untrusted}], trust: [[{key, from, text}]]}.
// tests/unit/test_explorer_explain.py judges the answers.

import { readFileSync } from "node:fs";
import { explain, trustLines, verdict } from "../../anchor/api/explorer/static/explain.js";
import { CHECK_NAMES, parseReceipt } from "../../anchor/api/explorer/static/verify.js";

const cases = JSON.parse(readFileSync(process.argv[2], "utf8"));
const r = parseReceipt(cases.receipt);
const plain = {};
for (const name of CHECK_NAMES) {
  plain[name] = {};
  for (const status of ["pass", "fail", "skip"]) {
    plain[name][status] = explain({ name, status, detail: "d", reason: null }, r);
  }
}
plain.witnesses_named = explain({
  name: "witnesses", status: "pass", reason: null,
  detail: "2 of 2 needed, cosigned by: w0.example+0a1b2c3d at 2026-11-25T15:00:00Z, w1.example+99aa88bb at 2026-11-25T15:00:01Z",
}, r);
const verdicts = cases.verdicts.map((v) => verdict(v.checks, v.sources, v.accepted));
const trust = cases.verdicts.map((v) => trustLines(v.sources, v.accepted));
console.log(JSON.stringify({ plain, verdicts, trust }));
