#!/usr/bin/env node
// Validate a built Teams manifest.json with Microsoft's own validator (ajv, from the
// pinned @microsoft/app-manifest), against the schema bundled in that package: offline.
//
//   node manifest/schema/validate.cjs path/to/manifest.json
//
// Exit 0 and print "ok" when valid; exit 1 and print one error per line otherwise.
"use strict";
const fs = require("fs");
const path = require("path");
const { AppManifestUtils } = require("@microsoft/app-manifest");

const PREFIX = "https://developer.microsoft.com/";

async function main(file) {
  if (!file) throw new Error("usage: node validate.cjs MANIFEST.json");
  // Runtime type check of the whole document (throws on a mismatch).
  const manifest = await AppManifestUtils.readTeamsManifest(file);
  const url = manifest.$schema || "";
  if (!url.startsWith(PREFIX + "json-schemas/teams/")) {
    throw new Error(`$schema ${JSON.stringify(url)} is not an official Teams schema URL`);
  }
  const pkg = path.dirname(require.resolve("@microsoft/app-manifest/package.json"));
  const local = path.join(pkg, "build", url.substring(PREFIX.length));
  if (!fs.existsSync(local)) {
    throw new Error(`@microsoft/app-manifest does not ship ${url}`);
  }
  const schema = JSON.parse(
    fs.readFileSync(local, "utf8").replace(/\\a/g, "\\u0007").replace(/\\v/g, "\\u000b"),
  );
  const errors = await AppManifestUtils.validateAgainstSchema(manifest, schema);
  if (errors.length) {
    for (const e of errors) console.log(e);
    process.exit(1);
  }
  console.log(`ok: ${file} is valid against ${url}`);
}

main(process.argv[2]).catch((err) => {
  console.error(String(err && err.message ? err.message : err));
  process.exit(2);
});
