// Drive the sonus page in headless Chromium with a fake microphone that plays a wav file, then
// upload the same wav with the page's file form.
//   node drive.js URL FILE.wav RECORD_MS
//   -> prints {"final", "partials", "status", "words", "recorded_ms", "upload": {"final", "status", "words"}} as JSON
// The browser's console messages and page errors go to stderr, with the page's status on failure.
// (launch() gives Chromium a fresh temporary --user-data-dir of its own.)
// playwright-core 1.55.x makes audioWorklet.addModule() hang forever (microsoft/playwright#37592):
// keep the version in package.json past it.
"use strict";
const { chromium } = require("playwright-core");
const { version } = require("playwright-core/package.json");

if (/^1\.55\./.test(version)) {
  console.error(`playwright-core ${version} hangs audioWorklet.addModule() (microsoft/playwright#37592): npm ci --prefix tests/serve/browser`);
  process.exit(2);
}

async function results(page) {
  return page.evaluate(() => ({
    final: document.getElementById("final").textContent,
    status: document.getElementById("status").textContent,
    words: [...document.querySelectorAll("#words tr td:first-child")].map((td) => td.textContent),
  }));
}

async function main() {
  const [url, wav, recordMs] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    headless: true,
    args: [
      "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", `--use-file-for-fake-audio-capture=${wav}`,
      "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync",
      "--no-first-run", "--disable-features=AudioServiceOutOfProcess",
      // no --autoplay-policy flag: the page starts its AudioContext in the click, as it must for a user
    ],
  });
  const context = await browser.newContext();
  const page = await context.newPage();
  const t0 = Date.now();
  const log = (line) => console.error(`[${((Date.now() - t0) / 1000).toFixed(2)} s] ${line}`);
  try {
    const partials = [];
    page.on("console", (m) => log(`[page ${m.type()}] ${m.text()}`));
    page.on("pageerror", (e) => log(`[page error] ${e}`));
    page.on("requestfailed", (r) => log(`[request failed] ${r.url()}: ${r.failure()?.errorText}`));
    page.on("response", (r) => { if (r.status() >= 400) log(`[http ${r.status()}] ${r.url()}`); });
    await page.exposeFunction("__partial", (t) => partials.push(t));
    await page.exposeFunction("__status", (t) => log(`[status] ${t}`));
    await page.goto(url);
    await page.evaluate(() => {
      const watch = (id, fn) => new MutationObserver(() => fn(document.getElementById(id).textContent))
        .observe(document.getElementById(id), { childList: true, characterData: true, subtree: true });
      watch("partial", window.__partial); // every partial the page shows
      window.__statusTimes = []; // [page time in ms, status]: how long it really recorded, whatever the load
      watch("status", (t) => { window.__statusTimes.push([performance.now(), t]); window.__status(t); });
    });

    // the microphone
    await page.click("#record");
    await page.waitForFunction(() => /^(recording|error)/.test(document.getElementById("status").textContent), null, { timeout: 20000 });
    const started = await page.textContent("#status");
    if (!started.startsWith("recording")) throw new Error(`the page did not start recording: ${started}`);
    await page.waitForTimeout(Number(recordMs));
    await page.click("#stop");
    await page.waitForFunction(() => /^(done|error)/.test(document.getElementById("status").textContent), null, { timeout: 20000 });
    const mic = await results(page);
    const times = await page.evaluate(() => window.__statusTimes);
    const at = (prefix) => times.find(([, t]) => t.startsWith(prefix))?.[0];
    mic.recorded_ms = at("finishing") - at("recording"); // from the page's clock: recording to the Stop click

    // the same wav through the file form
    await page.setInputFiles("#file", wav);
    await page.click("#upload"); // sets the status to "transcribing ..." before it returns
    await page.waitForFunction(() => /^(done|error)/.test(document.getElementById("status").textContent), null, { timeout: 20000 });
    const upload = await results(page);
    console.log(JSON.stringify({ ...mic, partials, upload }));
  } catch (e) {
    log(`page status: ${await page.textContent("#status").catch(() => "?")}`);
    throw e;
  } finally {
    await browser.close();
  }
}

main().catch((e) => { console.error(e); process.exit(1); });
