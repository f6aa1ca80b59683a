// ps_parse.js FILE: parse a PowerShell script with tree-sitter-powershell (web-tree-sitter,
// installed by scripts/install-deps.sh into tests/node) and print one JSON object:
//   { "errors": [ { "type", "row", "column" } ],      ERROR and MISSING nodes (none: it parses)
//     "hash_entries": [ { "key", "values": [...] } ] } every hashtable entry 'key' = @('v', ...),
//                                                     its single-quoted strings as PowerShell reads them
// An independent reading of what bkr wrote: the tests compare the values with the job's argv.
'use strict';
const fs = require('fs');
const path = require('path');

const root = path.join(__dirname, '..', 'node');
const modules = path.join(root, 'node_modules');
const { Parser, Language } = require(require.resolve('web-tree-sitter', { paths: [root] }));

// A verbatim string as PowerShell reads it: no expansion, a doubled quote is one quote
// (PowerShell takes the typographic single quotes as quotes too).
function verbatim(text) {
  return text.slice(1, -1).replace(/(['\u2018\u2019\u201A\u201B])\1/g, '$1');
}

function walk(node, visit) {
  visit(node);
  for (const child of node.children) walk(child, visit);
}

async function main() {
  const file = process.argv[2];
  await Parser.init();
  const language = await Language.load(path.join(modules, 'tree-sitter-powershell', 'tree-sitter-powershell.wasm'));
  const parser = new Parser();
  parser.setLanguage(language);
  const tree = parser.parse(fs.readFileSync(file, 'utf8'));
  const errors = [];
  const entries = [];
  walk(tree.rootNode, (node) => {
    if (node.isError || node.isMissing || node.type === 'ERROR') {
      errors.push({ type: node.type, row: node.startPosition.row + 1, column: node.startPosition.column + 1 });
    }
    if (node.type === 'hash_entry') {
      const key = node.children.find((c) => c.type === 'key_expression');
      const values = [];
      node.children.filter((c) => c !== key).forEach((c) => walk(c, (n) => {
        if (n.type === 'string_literal' && n.text.startsWith("'")) values.push(verbatim(n.text));
      }));
      entries.push({ key: key && key.text.startsWith("'") ? verbatim(key.text) : key && key.text, values });
    }
  });
  if (tree.rootNode.hasError && errors.length === 0) errors.push({ type: 'hasError', row: 0, column: 0 });
  process.stdout.write(JSON.stringify({ errors, hash_entries: entries }) + '\n');
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err) + '\n');
  process.exit(2);
});
