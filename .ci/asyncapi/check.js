// make test: the contract as a producer in another language sees it.
//  1. schemas/asyncapi.yaml through the official AsyncAPI parser: zero errors, zero warnings.
//  2. every schemas/*.json compiled by ajv (draft 2020-12, strict mode).
//  3. every message example in the AsyncAPI file valid under its JSON Schema, and ajv refusing a
//     request whose id is no job id (what a producer's validator catches before it sends).
// Usage: node check.js SCHEMAS_DIR. Exit 1 with the findings on stderr.
"use strict";
const fs = require("fs");
const path = require("path");
const { Parser, DiagnosticSeverity } = require("@asyncapi/parser");
const Ajv2020 = require("ajv/dist/2020").default;
const addFormats = require("ajv-formats").default;

async function main() {
  const dir = path.resolve(process.argv[2] || "schemas");
  const problems = [];

  const text = fs.readFileSync(path.join(dir, "asyncapi.yaml"), "utf8");
  const { document, diagnostics } = await new Parser().parse(text);
  for (const d of diagnostics) {
    const level = ["error", "warning", "info", "hint"][d.severity] || String(d.severity);
    const line = `asyncapi.yaml: ${level} ${d.code}: ${d.message} at ${d.path.join(".")}`;
    if (d.severity === DiagnosticSeverity.Error || d.severity === DiagnosticSeverity.Warning) problems.push(line);
    else console.log(line);
  }
  if (!document) problems.push("asyncapi.yaml: the parser returned no document");

  const ajv = new Ajv2020({ strict: true, allErrors: true });
  addFormats(ajv);
  const validators = {};
  for (const name of fs.readdirSync(dir).filter((n) => n.endsWith(".schema.json")).sort()) {
    try {
      const schema = JSON.parse(fs.readFileSync(path.join(dir, name), "utf8"));
      validators[schema.title] = ajv.compile(schema);
    } catch (err) {
      problems.push(`${name}: ${err.message}`);
    }
  }

  let checked = 0;
  if (document) {
    for (const message of document.allMessages()) {
      const validate = validators[message.name()];
      if (!validate) {
        problems.push(`message ${message.name()}: no schemas/${message.name()}.schema.json`);
        continue;
      }
      for (const example of message.examples()) {
        checked += 1;
        if (!validate(example.payload())) {
          problems.push(`example ${example.name()} of ${message.name()}: ${ajv.errorsText(validate.errors)}`);
        }
      }
    }
    if (checked === 0) problems.push("asyncapi.yaml: no message examples");
  }

  const uploaded = validators["jetmedia.asset.uploaded.v1"];
  const request = (id) => ({ specversion: "1.0", type: "jetmedia.asset.uploaded.v1", id, source: "node",
    data: { key: "uploads/cat.jpg" } });
  for (const bad of ["urn:uuid:1", "a/b", "a b", "x".repeat(201), "a..b", "j.chunk.0"]) {
    if (uploaded && uploaded(request(bad))) problems.push(`ajv accepted the job id ${JSON.stringify(bad)}`);
  }
  if (uploaded && !uploaded(request("tenant-7.order_42"))) problems.push("ajv refused a valid job id");

  if (problems.length) {
    for (const p of problems) console.error(p);
    process.exit(1);
  }
  console.log(`asyncapi.yaml parsed (0 errors, 0 warnings); ${Object.keys(validators).length} schemas compiled ` +
    `(2020-12, strict); ${checked} examples valid; bad job ids refused`);
}

main().catch((err) => {
  console.error(err.stack || String(err));
  process.exit(1);
});
