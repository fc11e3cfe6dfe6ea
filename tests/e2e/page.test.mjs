// The page, end to end: the real server (scripted personas) on port 0, driven in headless
// Chromium (Debian's /usr/bin/chromium through playwright-core). Screenshots go to
// build/e2e/ at the repository root.

import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";
import { createRequire } from "node:module";

const axePath = createRequire(import.meta.url).resolve("axe-core/axe.min.js");
/** Runs axe-core in the page; fails on serious or critical violations. */
async function accessible(page, view) {
  await page.addScriptTag({ path: axePath });
  const result = await page.evaluate(() => window.axe.run(document, { resultTypes: ["violations"] }));
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad.map((v) => `${v.id}: ${v.help} (${v.nodes.map((n) => n.target.join(" ")).join(", ")})`), [], `accessibility of the ${view} view`);
}

const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.TELOS_BIN || join(process.env.CARGO_TARGET_DIR || join(root, "target"), "debug/telos");
const shots = join(root, "build/e2e");

/** Starts `telos serve`; resolves with the process and its base URL. */
function serve(env) {
  return new Promise((ok, fail) => {
    const child = spawn(bin, ["serve"], { env: { ...process.env, TELOS_LOG: "warn", ...env }, stdio: ["ignore", "pipe", "pipe"] });
    let stderr = "";
    child.stderr.on("data", (d) => { stderr += d; });
    const lines = createInterface({ input: child.stdout });
    lines.once("line", (line) => {
      const m = /^listening on (http:\/\/\S+)$/.exec(line.trim());
      if (m) ok({ child, base: m[1] }); else fail(new Error("unexpected first line: " + line + "\n" + stderr));
    });
    child.once("exit", (code) => fail(new Error(`telos serve exited with ${code}\n${stderr}`)));
  });
}
const stop = (child) => new Promise((ok) => { child.once("exit", ok); child.kill("SIGTERM"); setTimeout(() => child.kill("SIGKILL"), 8000); });

const line = (persona, match, reply) => JSON.stringify({ persona, match, reply });

test("the page: clone, slots, chat, errors, kernel stages, inspector, restart", { timeout: 420_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "telos-e2e-"));
  const personas = join(dir, "personas.jsonl");
  writeFileSync(personas, [
    line("BRICK", "Write: function area", "```javascript\nfunction area(self, w, h) {\n  return w * h;\n}\n```"),
    line("ALFRED", ".", "VALID: it only multiplies its arguments"),
    line("BABS", ".", "Computes the area of a rectangle from its width and height."),
    line("ROBIN", ".", "Hello! I am ROBIN."),
  ].join("\n"));
  const env = { TELOS_BIND: "127.0.0.1:0", TELOS_DATA_DIR: join(dir, "data"), TELOS_BACKUP_DIR: join(dir, "backups"),
    TELOS_PERSONA_BACKEND: "scripted", TELOS_SCRIPTED_PERSONAS: personas };
  let server = await serve(env);
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
  const errors = [];
  let restarting = false;
  try {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("console", (m) => {
      if (m.type() !== "error") return;
      // While the server is deliberately down, the browser reports the refused reconnects.
      if (restarting && /ERR_CONNECTION_REFUSED|WebSocket connection/.test(m.text())) return;
      errors.push(m.text());
    });
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(server.base + "/");
    await page.locator("#conn", { hasText: "connected" }).waitFor();

    // Clone genesis_obj in the inspector and give the clone slots.
    await page.click("nav button[data-view=inspector]");
    await page.click("#obj-list button[data-oid=genesis_obj]");
    await page.locator("#obj-detail h2", { hasText: "genesis_obj" }).waitFor();
    await page.click("#clone-btn");
    const heading = page.locator("#obj-detail h2 .mono");
    await page.waitForFunction(() => { const h = document.querySelector("#obj-detail h2 .mono"); return h && h.textContent !== "genesis_obj"; });
    const oid = (await heading.textContent()).trim();
    for (const [name, value] of [["name", '"rectangle"'], ["width", "3"], ["height", "4"]]) {
      await page.fill("#add-slot input[aria-label='new slot name']", name);
      await page.fill("#add-slot input[aria-label='new slot value (JSON)']", value);
      await page.click("#add-slot button");
      await page.locator(`#slots tr[data-slot=${name}] td.value`, { hasText: value }).waitFor();
    }

    // Chat: a message and its answer; a bad command and its error.
    await page.click("nav button[data-view=chat]");
    const say = async (text) => {
      await page.fill("#chat-input", text);
      await page.press("#chat-input", "Enter");
      const entry = page.locator(".entry", { has: page.locator(".me", { hasText: text }) }).last();
      await entry.locator(".answer.ok, .answer.err, .answer.robin").waitFor({ timeout: 60_000 });
      return entry;
    };
    let entry = await say(`${oid}.width`);
    assert.equal((await entry.locator(".answer").textContent()).trim(), "3");
    entry = await say("nosuchobject.frob(1)");
    assert.match(await entry.locator(".answer.err").textContent(), /not_found/);
    entry = await say("hello there");
    assert.match(await entry.locator(".answer.robin").textContent(), /ROBIN/);

    // A missing method: the kernel's stages stream in, then the answer.
    entry = await say(`${oid}.area(3, 4)`);
    assert.equal((await entry.locator(".answer.ok").textContent()).trim(), "12");
    // Learning happens right after the answer; its stage still shows up in the timeline.
    await entry.locator(".stage.done", { hasText: "learn" }).waitFor({ state: "attached" });
    const stages = await entry.locator(".stage").evaluateAll((rows) => rows.map((r) => r.querySelector("summary").textContent));
    for (const s of ["recall", "write", "review", "trial", "install", "learn", "answer"]) {
      assert.ok(stages.some((t) => t.includes(s)), `stage ${s} shown: ${stages}`);
    }
    await entry.locator("details.timeline").evaluate((d) => { d.open = true; });
    await entry.locator(".stage", { hasText: "write" }).evaluate((d) => { d.open = true; });
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, "chat-after-kernel-run.png"), fullPage: true });

    await accessible(page, "chat");
    // The inspector shows the slot and the learned method with its provenance.
    await page.click("nav button[data-view=inspector]");
    await page.click(`#obj-list button[data-oid="${oid}"]`);
    await page.locator("#slots tr[data-slot=width] td.value", { hasText: "3" }).waitFor();
    const method = page.locator("details[data-method=area]");
    await method.waitFor();
    await method.locator("summary").click();
    await method.locator("details summary", { hasText: "provenance" }).waitFor();
    assert.match(await method.textContent(), /kernel/);
    await page.screenshot({ path: join(shots, "inspector.png"), fullPage: true });
    await accessible(page, "inspector");
    // Edit a slot in place.
    await page.click("#slots tr[data-slot=width] button[aria-label='edit width']");
    await page.fill("#slots tr[data-slot=width] input[aria-label='value of width']", "5");
    await page.click("#slots tr[data-slot=width] form button");
    await page.locator("#slots tr[data-slot=width] td.value", { hasText: "5" }).waitFor();
    await fetch(`${server.base}/api/objects/${oid}/slots/width`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify({ value: 3 }) });
    await page.locator("#slots tr[data-slot=width] td.value", { hasText: "3" }).waitFor();
    // Roll a method back: a second version, then the button restores the first.
    const put = (body) => fetch(`${server.base}/api/objects/${oid}/slots/double`, { method: "PUT", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
    await put({ method: "function double(self, x) { return 2 * x; }" });
    await put({ method: "function double(self, x) { return x + x + 0; }" });
    const dbl = page.locator("details[data-method=double]");
    await dbl.waitFor();
    await dbl.locator("summary").click();
    await dbl.locator("button", { hasText: "Roll back" }).click();
    // The installed method is the first version again (the history below it shows both).
    await page.waitForFunction(async (url) => (await (await fetch(url)).json()).source.includes("2 * x"),
      `${server.base}/api/objects/${oid}/methods/double`, { polling: 100, timeout: 10_000 });
    assert.match(await (await fetch(`${server.base}/api/objects/${oid}/methods/double`)).json().then((m) => m.source), /return 2 \* x;/);
    // Delete an object, with the confirmation.
    const doomed = await fetch(`${server.base}/api/objects/genesis_obj/clone`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ slots: { name: "doomed" } }) }).then((r) => r.json());
    await page.click("nav button[data-view=chat]");
    await page.click("nav button[data-view=inspector]");
    await page.click(`#obj-list button[data-oid="${doomed.oid}"]`);
    await page.locator("#obj-detail h2 .mono", { hasText: doomed.oid }).waitFor();
    page.once("dialog", (d) => d.accept());
    await page.click("#delete-btn");
    await page.locator("#obj-detail", { hasText: "Deleted " + doomed.oid }).waitFor();
    assert.equal((await fetch(`${server.base}/api/objects/${doomed.oid}`)).status, 404);

    // Memory: the learned method is found by meaning, with its distance and owner.
    const notes = ["the perimeter of a square is four times its side", "a circle's area is pi r squared",
      "Ada Lovelace wrote the first program", "Grace Hopper built the first compiler", "tea is brewed with hot water"];
    const remembered = await fetch(`${server.base}/api/memory/records`, { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ items: notes.map((text) => ({ text })) }) });
    assert.equal(remembered.status, 201);
    await page.click("nav button[data-view=memory]");
    await page.locator("#mem-stats", { hasText: "memories" }).waitFor();
    await page.fill("#mem-q", "area of a rectangle");
    await page.press("#mem-q", "Enter");
    const hit = page.locator("#mem-results li.hit").first();
    await hit.waitFor();
    assert.match(await hit.textContent(), /distance 0\.\d{3}/);
    assert.match(await hit.textContent(), new RegExp(oid));
    // The memory map: the learned method is a point; a click on it opens its owner.
    const point = page.locator(`#mem-map circle.pt[data-owner="${oid}"]`).first();
    await point.waitFor();
    assert.equal(await page.locator("#mem-map circle.pt").count(), notes.length + 1);
    // Coloured by kind (the legend's swatches), outlined by owner, the text on hover.
    assert.equal(await point.getAttribute("fill"), "#8cc8ff");
    assert.match(await point.getAttribute("stroke"), /^hsl\(/);
    assert.match(await point.locator("title").textContent(), new RegExp(`method · ${oid}\\.area: `));
    const note = page.locator("#mem-map circle.pt[data-owner=\"\"]", { has: page.locator("title", { hasText: "Grace Hopper" }) });
    assert.equal(await note.getAttribute("fill"), "#f5c26b");
    assert.equal(await note.getAttribute("stroke"), "none");
    await accessible(page, "memory");
    await page.screenshot({ path: join(shots, "memory-map.png"), fullPage: true });
    await point.click();
    await page.locator("#obj-detail h2 .mono", { hasText: oid }).waitFor();

    // Admin: health, the personas and their backends.
    await page.click("nav button[data-view=admin]");
    await page.locator("#personas tbody tr", { hasText: "BRICK" }).waitFor();
    assert.match(await page.locator("#personas tbody").textContent(), /scripted/);
    await page.locator("#health dd", { hasText: "ok" }).first().waitFor();
    // Unloading a persona whose model is not loaded (scripted) says so.
    await page.click("#personas button[aria-label='unload BRICK']");
    await page.locator("#personas tr", { hasText: "BRICK" }).locator("[role=status]", { hasText: "nothing loaded" }).waitFor();
    // A full backup of a 10,000-object world from the Admin view: its progress bar moves (every
    // value the page draws is recorded) and ends done; then verify it.
    const maker = await fetch(`${server.base}/api/objects/genesis_obj/clone`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ slots: { name: "maker" } }) }).then((r) => r.json());
    await fetch(`${server.base}/api/objects/${maker.oid}/slots/make`, { method: "PUT", headers: { "content-type": "application/json" },
      body: JSON.stringify({ method: "function make(self, n) { for (let i = 0; i < n; i++) clone(self, { i: i }); return n; }" }) });
    for (let i = 0; i < 10; i++) {
      const made = await fetch(`${server.base}/api/objects/${maker.oid}/send`, { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ selector: "make", args: [1000] }) });
      assert.equal(made.status, 200, await made.text());
    }
    await page.evaluate(() => {
      window.__bars = [];
      new MutationObserver(() => {
        for (const row of document.querySelectorAll("#jobs .job[data-kind=backup]")) {
          const bar = row.querySelector("progress");
          window.__bars.push([row.className, row.querySelector(".muted").textContent, bar.hasAttribute("value") ? Number(bar.value) : null, Number(bar.max)]);
        }
      }).observe(document.querySelector("#jobs"), { subtree: true, childList: true, attributes: true });
    });
    await page.click("#backup-full");
    await page.locator("#jobs .job.done[data-kind=backup]").waitFor({ timeout: 120_000 });
    const bars = await page.evaluate(() => window.__bars);
    const written = bars.filter(([cls, phase]) => cls.includes("running") && phase === "objects");
    assert.ok(written.length >= 2, `the objects phase drawn more than once: ${JSON.stringify(bars)}`);
    assert.equal(written[0][2], 0, JSON.stringify(written));
    assert.ok(written.at(-1)[2] === written.at(-1)[3] && written.at(-1)[3] >= 10_000, JSON.stringify(written));
    assert.ok(bars.some(([cls, phase]) => cls.includes("running") && phase === "read objects"), JSON.stringify(bars));
    assert.match(await page.locator("#backup-status").textContent(), /written|running/);
    const backupRow = page.locator("#backups tbody tr").first();
    await backupRow.waitFor();
    await backupRow.locator("button", { hasText: "Verify" }).click();
    await page.locator("#jobs .job.done[data-kind=verify]").waitFor({ timeout: 60_000 });
    await page.locator("#backups tbody tr td", { hasText: /^ok/ }).first().waitFor({ timeout: 60_000 });
    await page.screenshot({ path: join(shots, "admin.png"), fullPage: true });
    await accessible(page, "admin");

    // Restart the server on the same port: the page reconnects by itself.
    const port = new URL(server.base).port;
    restarting = true;
    await stop(server.child);
    await page.locator("#conn", { hasText: "reconnecting" }).waitFor();
    server = await serve({ ...env, TELOS_BIND: "127.0.0.1:" + port });
    await page.locator("#conn", { hasText: "reconnected" }).waitFor({ timeout: 30_000 });
    restarting = false;
    await page.click("nav button[data-view=chat]");
    entry = await say(`${oid}.area(2, 5)`);
    assert.equal((await entry.locator(".answer.ok").textContent()).trim(), "10");
    assert.deepEqual(errors, [], "no console errors");
  } finally {
    await browser.close();
    await stop(server.child);
  }
});

test("the page: a person approves and rejects generated methods (kernel_approval = ask)", { timeout: 240_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), "telos-e2e-approval-"));
  const personas = join(dir, "personas.jsonl");
  writeFileSync(personas, [
    // Only a prompt carrying the person's reason gets the method that reads the slots.
    line("BRICK", "read the slots", "```javascript\nfunction area(self) {\n  return self.width * self.height;\n}\n```"),
    line("BRICK", ".", "```javascript\nfunction area(self, w, h) {\n  return w * h;\n}\n```"),
    line("ALFRED", ".", "VALID: it multiplies"),
    line("BABS", ".", "Computes the area of a rectangle."),
  ].join("\n"));
  const server = await serve({ TELOS_BIND: "127.0.0.1:0", TELOS_DATA_DIR: join(dir, "data"), TELOS_BACKUP_DIR: join(dir, "backups"),
    TELOS_PERSONA_BACKEND: "scripted", TELOS_SCRIPTED_PERSONAS: personas, TELOS_KERNEL_APPROVAL: "ask", TELOS_KERNEL_REPAIR_ROUNDS: "0" });
  const browser = await chromium.launch({ executablePath: process.env.CHROMIUM || "/usr/bin/chromium", headless: true, args: ["--no-sandbox"] });
  const errors = [];
  try {
    const made = await fetch(server.base + "/api/objects/genesis_obj/clone", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ slots: { name: "box", width: 3, height: 4 } }) }).then((r) => r.json());
    const oid = made.oid;
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    page.on("pageerror", (e) => errors.push(String(e)));
    await page.goto(server.base + "/");
    await page.locator("#conn", { hasText: "connected" }).waitFor();
    const ask = async (text) => {
      await page.fill("#chat-input", text);
      await page.press("#chat-input", "Enter");
      const entry = page.locator(".entry", { has: page.locator(".me", { hasText: text }) }).last();
      await entry.locator(".approval button.approve-btn").waitFor({ timeout: 60_000 });
      return entry;
    };

    // The method waits in the approve stage, shown with its code, review and trial answer.
    let entry = await ask(`${oid}.area(3, 4)`);
    const approval = entry.locator(".stage", { hasText: "approve" });
    assert.match(await approval.textContent(), /w \* h/);
    assert.match(await approval.textContent(), /trial answered: 12/);
    // The Admin view lists it too, for messages sent from anywhere.
    await page.click("nav button[data-view=admin]");
    await page.locator("#approvals .waiting", { hasText: oid }).waitFor();
    mkdirSync(shots, { recursive: true });
    await page.screenshot({ path: join(shots, "admin-approval.png"), fullPage: true });
    await page.click("nav button[data-view=chat]");
    // Reject, with a reason: the message is answered with an error naming it.
    await entry.locator(".approval input.reason").fill("read the slots instead of taking arguments");
    await page.screenshot({ path: join(shots, "chat-approval.png"), fullPage: true });
    await entry.locator(".approval button.reject-btn").click();
    const answer = entry.locator(":scope > .answer.err");
    await answer.waitFor({ timeout: 30_000 });
    assert.match(await answer.textContent(), /page rejected the method: read the slots instead/);

    // The next attempt's prompt carried the reason: the new method reads the slots. Approve it.
    entry = await ask(`${oid}.area(3, 4)`);
    assert.match(await entry.locator(".stage", { hasText: "approve" }).textContent(), /self\.width/);
    await entry.locator(".approval button.approve-btn").click();
    await entry.locator(".answer.ok").waitFor({ timeout: 30_000 });
    assert.equal((await entry.locator(".answer.ok").textContent()).trim(), "12");
    const method = await fetch(`${server.base}/api/objects/${oid}/methods/area`).then((r) => r.json());
    assert.equal(method.provenance.approved.by, "page");
    assert.deepEqual(errors, [], "no console errors");
  } finally {
    await browser.close();
    await stop(server.child);
  }
});
