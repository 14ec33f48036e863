// The page's side of the browser test (tests/browser/test_browser_glow.py): glow.ts, bundled
// for the browser by drive.mjs, talks to a relay on another origin, so every request is a
// real cross-origin fetch (CORS headers, preflights) in a real Chromium.
//
// window.runScenarios(relayUrl, difficulty) runs every scenario, each to its end or first
// mismatch, and resolves to [{name, ok, detail, ms}]: one failing scenario does not hide the
// others' results.

import { CryptoStorage, GlowNetworkError, Mailbox, NaCl } from "glow.ts";

const SECRETBOX_OVERHEAD = 16;  // the MAC crypto_secretbox adds to each file chunk

class Mismatch extends Error {}

function check(condition, what) {
  if (!condition) throw new Mismatch(what);
}

function checkEqual(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(a === e, `${what}: expected ${e}, got ${a}`);
}

async function mustFail(promise, what) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Mismatch(`${what}: expected an error, got success`);
}

function randomBytes(length) {
  const bytes = new Uint8Array(length);
  for (let at = 0; at < length; at += 65536) {  // getRandomValues' limit per call
    crypto.getRandomValues(bytes.subarray(at, Math.min(length, at + 65536)));
  }
  return bytes;
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

function concat(chunks) {
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

async function connectedPair(url, difficulty) {
  const alice = await Mailbox.fromSeed("alice", randomBytes(32));
  const bob = await Mailbox.fromSeed("bob", randomBytes(32));
  await alice.keyRing.addGuest("bob", bob.keyRing.getPubCommKey());
  await bob.keyRing.addGuest("alice", alice.keyRing.getPubCommKey());
  for (const mailbox of [alice, bob]) {
    checkEqual(await mailbox.connectToRelay(url), 0, `${mailbox.identity}: connectToRelay`);
    checkEqual(mailbox.relayFactory.getInstance(url).difficulty, difficulty,
      `${mailbox.identity}: the relay's difficulty`);
  }
  return { alice, bob };
}

// CORS itself, without glow: error answers must be readable cross-origin (status and
// X-Error-Details), and requests that need a preflight must pass it.
async function corsScenario(url) {
  check(new URL(url).origin !== location.origin, `the page shares the relay's origin ${url}`);
  const steps = [];
  // A "simple" request, as glow sends them (text/plain): no preflight.
  const simple = await fetch(`${url}/start_session`, {
    method: "POST", headers: { "Content-Type": "text/plain" }, body: "not a token",
  });
  check(simple.status >= 400 && simple.status < 500,
    `simple POST of a bad token: expected a 4xx, got ${simple.status}`);
  check(simple.headers.get("X-Error-Details"), "simple POST: X-Error-Details not exposed");
  steps.push(`simple ${simple.status} (${simple.headers.get("X-Error-Details")})`);
  // Preflighted requests (a non-simple content type and a custom header), on the mailbox API
  // and on the rendezvous: the browser sends OPTIONS first and refuses on a bad answer
  // (TypeError: Failed to fetch).
  for (const path of ["command", "start_session", "join"]) {
    let answer;
    try {
      answer = await fetch(`${url}/${path}`, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Client-Probe": "1" },
        body: "{}",
      });
    } catch (error) {
      throw new Mismatch(`preflighted POST /${path} refused by the browser: ${error}`);
    }
    check(answer.status >= 400 && answer.status < 500,
      `preflighted POST /${path}: expected a 4xx for a bad body, got ${answer.status}`);
    steps.push(`preflighted /${path} ${answer.status}`);
  }
  // An unknown path: Zax's 503, still readable.
  const unknown = await fetch(`${url}/no-such-endpoint`, { method: "POST", body: "" });
  checkEqual(unknown.status, 503, "unknown path: status");
  return steps.join(", ");
}

async function messagesScenario(url, difficulty) {
  const { alice, bob } = await connectedPair(url, difficulty);
  const texts = ["hello bob", "zwei Grüße, ünïcödé ✓ 🚀", "x".repeat(20000)];
  const tokens = [];
  for (const text of texts) tokens.push(await alice.upload(url, "bob", text));
  tokens.push(await alice.upload(url, "bob", "plain", false));
  checkEqual(await bob.count(url), 4, "bob: count");
  const inbox = await bob.download(url);
  checkEqual(inbox.map((m) => [m.senderTag, m.data]),
    [...texts, "plain"].map((text) => ["alice", text]), "bob: downloaded messages");
  checkEqual(await bob.delete(url, inbox.map((m) => m.nonce)), 0, "bob: delete");
  for (const token of tokens) {
    checkEqual(await alice.messageStatus(url, token), -2, "messageStatus after delete");
  }
  // A 401 must reach glow as a 401 (it re-handshakes on it), not as a CORS failure.
  const bobElsewhere = await Mailbox.fromSecKey("bob-elsewhere", bob.keyRing.getPrivateCommKey());
  checkEqual(await bobElsewhere.connectToRelay(url), 0, "bob elsewhere: connectToRelay");
  const stale = await mustFail(bob.count(url), "bob: count on a replaced session");
  check(stale instanceof GlowNetworkError && stale.status === 401,
    `count on a replaced session: expected a 401, got ${stale} (status ${stale?.status})`);
  checkEqual(await bob.count(url), 0, "bob: count after glow reconnects");
  return `${tokens.length} messages up and down, 401 seen`;
}

// Cuts `size` bytes into parts of the given sizes (the last sizes repeat).
function cut(size, sizes) {
  const parts = [];
  for (let at = 0, i = 0; at < size; i++) {
    const length = sizes[Math.min(i, sizes.length - 1)];
    parts.push([at, Math.min(size, at + length)]);
    at += length;
  }
  return parts;
}

async function fileScenario(url, difficulty, { size, sizes, reverse }) {
  const { alice, bob } = await connectedPair(url, difficulty);
  const fileBytes = randomBytes(size);
  const metadata = { name: "browser ✓.bin", orig_size: size, created: 1700000000 };
  const started = await alice.startFileUpload(url, "bob", metadata);
  const plainMax = started.max_chunk_size - SECRETBOX_OVERHEAD;
  const bounds = cut(size, sizes.map((s) => (s === "max" ? plainMax : s)));
  check(bounds.every(([from, to]) => to - from <= plainMax), "a chunk over max_chunk_size");
  const order = bounds.map((_, i) => i);
  if (reverse) order.reverse();
  for (const part of order) {
    const [from, to] = bounds[part];
    checkEqual(await alice.uploadFileChunk(url, started.uploadID, fileBytes.subarray(from, to),
      part, bounds.length, started.skey), { status: "OK" }, `uploadFileChunk ${part}`);
  }
  const status = await alice.getFileStatus(url, started.uploadID);
  checkEqual([status.status, status.total_chunks, status.file_size],
    ["COMPLETE", bounds.length, size], "fileStatus after the upload");

  const notice = (await bob.download(url)).find((m) => m.kind === "file");
  check(notice && notice.uploadID === started.uploadID, "bob: no file notice");
  const chunks = [];
  for (let part = 0; part < status.total_chunks; part++) {
    const chunk = await bob.downloadFileChunk(url, started.uploadID, part, notice.data.skey);
    check(chunk instanceof Uint8Array, `downloadFileChunk ${part}: did not decrypt`);
    chunks.push(chunk);
  }
  const downloaded = concat(chunks);
  checkEqual(downloaded.length, size, "downloaded size");
  checkEqual(await sha256Hex(downloaded), await sha256Hex(fileBytes), "downloaded sha256");
  checkEqual(await bob.deleteFile(url, started.uploadID), { status: "OK" }, "deleteFile");
  checkEqual(await bob.delete(url, [notice.nonce]), 0, "bob: delete the notice");
  const widths = bounds.map(([from, to]) => to - from);
  return `${size} bytes in ${bounds.length} parts of ${Math.min(...widths)}..`
    + `${Math.max(...widths)} bytes (max_chunk_size ${started.max_chunk_size})`;
}

const FILES = [
  ["file, full chunks", { size: 2 * 500 * 1024 + 12345, sizes: ["max"] }],
  ["file, 4 KiB chunks", { size: 40000, sizes: [4096] }],
  // The cut from issue 10: 918 bytes in chunks of 50 to 300 bytes.
  ["file, 50-300 byte chunks", { size: 918, sizes: [300, 50, 217, 133, 300] }],
  ["file, 700 byte chunks, last part first", { size: 5000, sizes: [700], reverse: true }],
];

window.runScenarios = async (url, difficulty) => {
  NaCl.setDefaultInstance();
  CryptoStorage.setDefaultStorageDriver();  // glow's browser storage: localStorage
  url = url.replace(/\/+$/, "");
  const scenarios = [
    ["cors", () => corsScenario(url)],
    ["messages", () => messagesScenario(url, difficulty)],
    ...FILES.map(([name, spec]) => [name, () => fileScenario(url, difficulty, spec)]),
  ];
  const results = [];
  for (const [name, run] of scenarios) {
    const started = performance.now();
    let ok = false;
    let detail;
    try {
      detail = await run();
      ok = true;
    } catch (error) {
      const kind = error instanceof Mismatch ? "mismatch" : "error";
      detail = `${kind}: ${error?.message ?? error}`
        + (error instanceof GlowNetworkError ? ` (status ${error.status})` : "");
    }
    const ms = Math.round(performance.now() - started);
    console.log(`${name}: ${ok ? "ok" : "FAILED"}: ${detail} (${ms} ms)`);
    results.push({ name, ok, detail, ms });
  }
  return results;
};
