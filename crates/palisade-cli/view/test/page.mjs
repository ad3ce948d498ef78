// Drives the pages `palisade view` wrote in headless Chromium (Debian's
// /usr/bin/chromium through playwright-core, which downloads no browser) and prints
// what it saw as one JSON line; the Rust test crates/palisade-cli/tests/it/view.rs
// decides pass or fail from it. Usage: node page.mjs SPEC.json
// SPEC: {chromium, userDataDir, aws: {page, screenshot, screenshotClicked, click: {from, to},
//        searches: [query]}, big: {page, screenshot}}
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { chromium } = require("playwright-core");
const spec = JSON.parse(readFileSync(process.argv[2], "utf8"));

const context = await chromium.launchPersistentContext(spec.userDataDir, {
  executablePath: spec.chromium,
  headless: true,
  args: ["--no-sandbox", "--disable-background-networking", "--disable-component-update"],
  viewport: { width: 1400, height: 900 },
});
const out = {};
try {
  for (const [name, s] of Object.entries({ aws: spec.aws, big: spec.big })) {
    const page = await context.newPage();
    const seen = { consoleErrors: [], requests: [] };
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") seen.consoleErrors.push(`${m.type()}: ${m.text()}`); });
    page.on("pageerror", (e) => seen.consoleErrors.push(`pageerror: ${e.message}`));
    // The page must need nothing but itself: any request other than the file is
    // recorded and refused.
    await page.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith("file:") || url.startsWith("data:")) return route.continue();
      seen.requests.push(url);
      return route.abort();
    });
    const start = Date.now();
    await page.goto(`file://${s.page}`, { waitUntil: "load", timeout: 60000 });
    await page.waitForSelector("body[data-ready]", { timeout: 60000 });
    seen.wallMs = Date.now() - start;
    seen.renderedMs = Number(await page.getAttribute("body", "data-ready"));
    seen.summary = await page.textContent("#summary");
    seen.graphEdges = await page.getAttribute("#graph", "data-edges");
    seen.graphMessage = await page.textContent("#graph-message");
    if (name === "aws") {
      // Every cell the matrix draws: [from, to, mark].
      seen.cells = await page.$$eval(".cell", (cs) => cs.map((c) => [c.dataset.from, c.dataset.to, c.textContent]));
      seen.rowLabels = await page.$$eval(".rowlabel", (ls) => ls.map((l) => l.dataset.pod));
      await page.screenshot({ path: s.screenshot, fullPage: false });
      // Click the denied cell the test names, and read the explain panel.
      await page.click(`.cell[data-from="${s.click.from}"][data-to="${s.click.to}"]`);
      await page.waitForFunction(() => document.querySelector("#explain-text")?.textContent !== "…");
      seen.clicked = {
        verdict: await page.textContent("#explain-verdict"),
        deciding: await page.textContent("#explain-deciding"),
        text: await page.textContent("#explain-text"),
      };
      await page.screenshot({ path: s.screenshotClicked, fullPage: false });
      // Search narrows both axes of the matrix to the pods that match.
      seen.searches = {};
      for (const q of s.searches) {
        await page.fill("#search", q);
        await page.waitForFunction((q) => document.querySelector("#summary").textContent.includes(`match "${q}"`), q);
        seen.searches[q] = {
          rows: await page.$$eval(".rowlabel", (ls) => ls.map((l) => l.dataset.pod)),
          columns: await page.$$eval(".collabel", (ls) => ls.map((l) => l.dataset.pod)),
        };
      }
    } else {
      seen.cellsDrawn = await page.$$eval(".cell", (cs) => cs.length);
      await page.screenshot({ path: s.screenshot, fullPage: false });
    }
    out[name] = seen;
    await page.close();
  }
} finally {
  await context.close();
}
console.log(JSON.stringify(out));
