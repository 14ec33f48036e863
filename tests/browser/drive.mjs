// Runs scenario.mjs in headless Chromium against a relay (tests/browser/test_browser_glow.py).
//
//   node drive.mjs <relay-url> <difficulty> <chromium> <user-data-dir> <timeout-seconds>
//
// glow.ts ships ES and CommonJS modules only, so esbuild bundles scenario.mjs with glow.ts and
// its dependencies into one browser script. A static server on its own free port serves the
// page, so the page's origin differs from the relay's and every call is cross-origin. The
// page's console goes to stderr; one JSON line with the scenarios' results goes to stdout.

import { createServer } from "node:http";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import puppeteer from "puppeteer-core";

const PAGE = `<!doctype html>
<html><head><meta charset="utf-8"><title>relay: glow.ts in a browser</title></head>
<body><script src="/bundle.js"></script></body></html>`;

// Flags for a quiet headless Chromium in a container (no sandbox as root, no GPU, nothing
// fetched in the background that could slow or disturb the run).
const CHROMIUM_FLAGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

async function bundle() {
  const result = await build({
    entryPoints: [fileURLToPath(new URL("./scenario.mjs", import.meta.url))],
    bundle: true, format: "iife", platform: "browser", target: "chrome100", write: false,
    logLevel: "error",
  });
  return result.outputFiles[0].contents;
}

function serve(script) {
  const server = createServer((request, response) => {
    const path = new URL(request.url, "http://page").pathname;
    if (path === "/") {
      response.writeHead(200, { "Content-Type": "text/html; charset=utf-8" });
      response.end(PAGE);
    } else if (path === "/bundle.js") {
      response.writeHead(200, { "Content-Type": "text/javascript; charset=utf-8" });
      response.end(script);
    } else {
      response.writeHead(404);
      response.end();
    }
  });
  return new Promise((resolve) => {
    server.listen(0, "127.0.0.1", () => resolve(server));
  });
}

function withTimeout(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took over ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function main([relayUrl, difficultyText, chromium, userDataDir, timeoutText]) {
  const difficulty = Number(difficultyText);
  const timeout = Number(timeoutText);
  if (!relayUrl || !Number.isInteger(difficulty) || !chromium || !userDataDir || !timeout) {
    throw new Error("usage: drive.mjs <relay-url> <difficulty> <chromium> <user-data-dir> <timeout>");
  }
  const server = await serve(await bundle());
  const pageUrl = `http://127.0.0.1:${server.address().port}/`;
  const browser = await puppeteer.launch({
    executablePath: chromium, headless: true, userDataDir, args: CHROMIUM_FLAGS,
    timeout: timeout * 1000, protocolTimeout: timeout * 1000,
  });
  try {
    const page = await browser.newPage();
    page.on("console", (message) => console.error(`[page] ${message.text()}`));
    page.on("pageerror", (error) => console.error(`[page error] ${error}`));
    await page.goto(pageUrl, { waitUntil: "load", timeout: timeout * 1000 });
    const results = await withTimeout(
      page.evaluate((url, d) => window.runScenarios(url, d), relayUrl, difficulty),
      timeout, "the page's scenarios");
    const version = await browser.version();
    console.log(JSON.stringify({ browser: version, page: pageUrl, results }));
  } finally {
    await browser.close();
    server.close();
  }
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (error) => {
    console.error(`drive.mjs: ${error?.stack ?? error}`);
    process.exit(1);
  },
);
