// Compile the published schemas with ajv in strict mode (draft 2020-12, ajv-formats): what
// editors and CI validators outside the engine run. The engine's own keyword, `x-message` (the
// wording of a rule's error), is declared as a vocabulary keyword; nothing else is allowed.
// Usage: node ajv-strict.cjs <schema.json>...   (NODE_PATH: where ajv and ajv-formats are)
const fs = require("fs");
const Ajv2020 = require("ajv/dist/2020");
const addFormats = require("ajv-formats");

const ajv = new Ajv2020({ strict: true, allErrors: true });
addFormats(ajv);
ajv.addVocabulary(["x-message"]);
let failed = 0;
for (const file of process.argv.slice(2)) {
  try {
    const schema = JSON.parse(fs.readFileSync(file, "utf8"));
    if (!schema.$id) throw new Error("no $id");
    ajv.compile(schema);
    console.log(`ok ${file}`);
  } catch (e) {
    failed += 1;
    console.log(`FAIL ${file}: ${e.message}`);
  }
}
process.exit(failed ? 1 : 0);
