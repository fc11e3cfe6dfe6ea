// The OpenAPI document, end to end: served by the real server, checked by an independent
// validator (@seriousme/openapi-schema-validator, against the official OpenAPI 3.1 schemas),
// and turned into a client by a generator from the registry (swagger-typescript-api), which
// then clones an object, gives it a method and sends it a message.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { createInterface } from "node:readline";
import { Validator } from "@seriousme/openapi-schema-validator";
import { generateApi } from "swagger-typescript-api";

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.TELOS_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug/telos");

function serve(env) {
  return new Promise((ok, fail) => {
    const child = spawn(bin, ["serve"], { env: { ...process.env, TELOS_LOG: "warn", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => { stderr += d; });
    createInterface({ input: child.stdout }).once("line", (line) => {
      const m = /^listening on (http:\/\/\S+)$/.exec(line.trim());
      if (m) ok({ child, base: m[1] }); else fail(new Error("unexpected first line: " + line + "\n" + stderr));
    });
    child.once("exit", (code) => fail(new Error(`telos serve exited with ${code}\n${stderr}`)));
  });
}
const stop = (child) => new Promise((ok) => { child.once("exit", ok); child.kill("SIGTERM"); setTimeout(() => child.kill("SIGKILL"), 8000); });

test("the OpenAPI document validates, and a client generated from it clones and sends", { timeout: 120_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "telos-openapi-"));
  const personas = join(dir, "personas.jsonl");
  writeFileSync(personas, "");
  const { child, base } = await serve({ TELOS_BIND: "127.0.0.1:0", TELOS_DATA_DIR: join(dir, "data"),
    TELOS_BACKUP_DIR: join(dir, "backups"), TELOS_PERSONA_BACKEND: "scripted", TELOS_SCRIPTED_PERSONAS: personas });
  try {
    const res = await fetch(base + "/api/openapi.json");
    assert.equal(res.status, 200);
    const doc = await res.json();
    assert.equal(doc.openapi, "3.1.0");

    const checked = await new Validator().validate(doc);
    assert.equal(checked.valid, true, JSON.stringify(checked.errors, null, 1));
    // Every operation says what it answers, and every schema it names exists.
    for (const [path, ops] of Object.entries(doc.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        assert.ok(Object.keys(op.responses || {}).length > 0, `${method} ${path} has no responses`);
        for (const ref of JSON.stringify(op).matchAll(/"#\/components\/schemas\/([^"]+)"/g)) {
          assert.ok(doc.components.schemas[ref[1]], `${method} ${path} names a missing schema ${ref[1]}`);
        }
      }
    }

    // A client, generated from the document and loaded as a module.
    const generated = await generateApi({ spec: doc, output: false, httpClientType: "fetch", toJS: true, silent: true });
    const api = generated.files.find((f) => f.fileExtension === ".js");
    assert.ok(api, "the generator wrote no JavaScript");
    const file = join(dir, "Api.mjs");
    writeFileSync(file, api.fileContent);
    const { Api } = await import(pathToFileURL(file).href);
    const client = new Api({ baseUrl: base }).api;

    const cloned = await client.cloneObject("genesis_obj", { slots: { w: 3, h: 4 } });
    assert.equal(cloned.status, 201);
    const oid = cloned.data.oid;
    assert.match(oid, /\S/);
    await client.putSlot(oid, "area", { method: "function area(self) { return self.w * self.h; }" });
    const sent = await client.send(oid, { selector: "area", args: [] });
    assert.deepEqual(sent.data, { value: 12, logs: [] });
    const method = await client.getMethod(oid, "area");
    assert.equal(method.data.origin, "user");
    const shown = await client.getObject(oid);
    assert.deepEqual(shown.data.parents, ["genesis_obj"]);

    // Errors arrive in the documented shape.
    const missing = await client.getObject("no_such_object").then(() => null, (e) => e);
    assert.ok(missing, "a missing object answered");
    assert.equal(missing.status, 404);
    assert.equal(missing.error.code, "not_found");
  } finally {
    await stop(child);
  }
});
