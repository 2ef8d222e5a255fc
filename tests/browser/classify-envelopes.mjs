// Classify envelopes with the explorer's verify.js parser (no keys, no signatures): for each hex
// string in the JSON array read from the file named on the command line, print "ok" or the
// VerifyError reason. Prints one JSON array; used by tests/unit/test_explorer_js.py to compare
// the browser's parser with anchor/envelope.py on many generated variants.

import { readFileSync } from "node:fs";
import { VerifyError, hexToBytes, parseEnvelope } from "../../anchor/api/explorer/static/verify.js";

const inputs = JSON.parse(readFileSync(process.argv[2], "utf8"));
const out = inputs.map((hex) => {
  try {
    parseEnvelope(hexToBytes(hex));
    return "ok";
  } catch (e) {
    if (!(e instanceof VerifyError)) return `crash: ${e && e.message}`;
    return e.reason;
  }
});
console.log(JSON.stringify(out));
