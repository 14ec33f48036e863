// Drives a running relay with the real glow.ts client (the Zax client library on npm).
//
//   node glow_scenario.mjs <relay-url> <messages|files> <expected-difficulty>
//
// Two fresh identities (random seeds, so every run starts with empty mailboxes) talk through
// the relay. Every answer is checked; the first mismatch exits 1 with a message on stderr.
// On success one JSON line goes to stdout: the results, plus `relay_must_not_log`, the key
// material and tokens the relay saw in full, which the pytest side greps the relay's log for.

import { createHash, randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { compileFunction } from "node:vm";

// glow.ts 1.1.2 as published does not load in Node by either door: its ES build imports named
// exports from tweetnacl, a CommonJS module ("Named export 'hash' not found"), and its CommonJS
// build is a .js file in a "type": "module" package, so require() treats it as ESM
// ("exports is not defined"). So compile the CommonJS build as the CommonJS it is.
function loadGlow() {
  const path = createRequire(import.meta.url).resolve("glow.ts");  // dist/glow.cjs.js
  const module = { exports: {} };
  const body = compileFunction(readFileSync(path, "utf8"), ["exports", "require", "module"],
    { filename: path });
  body(module.exports, createRequire(path), module);
  return module.exports;
}

const {
  CryptoStorage, GlowNetworkError, InMemoryStorage, Mailbox, NaCl, Utils,
} = loadGlow();

const MESSAGE_TTL_SECONDS = 5 * 24 * 3600;  // the relay's default message_ttl
const FILE_CHUNKS = 3;  // a file of two full chunks and a partial third
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

// The call must fail; returns the error so the caller can check what kind.
async function mustFail(promise, what) {
  try {
    await promise;
  } catch (error) {
    return error;
  }
  throw new Mismatch(`${what}: expected an error, got success`);
}

const b64 = (bytes) => Utils.toBase64(bytes);
const sha256Hex = (bytes) => createHash("sha256").update(bytes).digest("hex");

async function h2b64(b64text) {
  return b64(await NaCl.getInstance().h2(Utils.fromBase64(b64text)));
}

// Everything secret or identifying the relay was sent in full for this mailbox's session.
// Reaches into glow's Relay object: the tokens and session keys are not public API.
async function sessionMaterial(mailbox, url) {
  const relay = mailbox.relayFactory.getInstance(url);
  check(relay.isConnected, `${mailbox.identity}: not connected to ${url}`);
  const material = [mailbox.keyRing.getPubCommKey(), await mailbox.keyRing.getHpk(),
    relay.sessionKeys.publicKey, b64(relay.publicKey)];
  if (relay.clientToken) {
    material.push(b64(relay.clientToken), b64(await NaCl.getInstance().h2(relay.clientToken)));
  }
  return material;
}

async function connect(mailbox, url, expectedDifficulty, expectedCount) {
  const count = await mailbox.connectToRelay(url);
  checkEqual(count, expectedCount, `${mailbox.identity}: connectToRelay message count`);
  const relay = mailbox.relayFactory.getInstance(url);
  checkEqual(relay.difficulty, expectedDifficulty, `${mailbox.identity}: relay difficulty`);
  return sessionMaterial(mailbox, url);
}

async function makePair() {
  const alice = await Mailbox.fromSeed("alice", randomBytes(32));
  const bob = await Mailbox.fromSeed("bob", randomBytes(32));
  const bobHpk = await alice.keyRing.addGuest("bob", bob.keyRing.getPubCommKey());
  const aliceHpk = await bob.keyRing.addGuest("alice", alice.keyRing.getPubCommKey());
  checkEqual(bobHpk, await bob.keyRing.getHpk(), "guest hpk computed by alice");
  checkEqual(aliceHpk, await alice.keyRing.getHpk(), "guest hpk computed by bob");
  return { alice, bob };
}

function checkStatusAlive(status, what) {
  check(Number.isInteger(status) && status > MESSAGE_TTL_SECONDS - 120
    && status <= MESSAGE_TTL_SECONDS,
  `${what}: expected about ${MESSAGE_TTL_SECONDS} s to live, got ${status}`);
}

function checkTime(time, startedAt, what) {
  const now = Date.now() / 1000;
  check(typeof time === "number" && time >= startedAt - 2 && time <= now + 2,
    `${what}: time ${time} is not between the run's start ${startedAt} and now ${now}`);
}

async function messagesScenario(url, difficulty) {
  const startedAt = Date.now() / 1000;
  const { alice, bob } = await makePair();
  const seen = [
    ...await connect(alice, url, difficulty, 0),
    ...await connect(bob, url, difficulty, 0),
  ];

  // alice -> bob: two encrypted messages (one non-ASCII) and one plaintext message.
  const texts = ["hello bob", "zwei Grüße, ünïcödé ✓ 🚀"];
  const plain = "plaintext, stored as uploaded";
  const tokens = [];
  for (const text of texts) tokens.push(await alice.upload(url, "bob", text));
  tokens.push(await alice.upload(url, "bob", plain, false));
  for (const token of tokens) {
    check(typeof token === "string" && Utils.fromBase64(token).length === 32,
      `upload: storage token ${JSON.stringify(token)} is not 32 bytes of base64`);
  }
  check(new Set(tokens).size === tokens.length, "upload: storage tokens are not distinct");
  seen.push(...tokens);

  checkEqual(await bob.count(url), 3, "bob: count after 3 uploads");
  checkEqual(await alice.count(url), 0, "alice: count of her own, empty mailbox");
  for (const token of tokens) {
    checkStatusAlive(await alice.messageStatus(url, token), "messageStatus");
  }

  const inbox = await bob.download(url);
  checkEqual(inbox.length, 3, "bob: number of downloaded messages");
  checkEqual(inbox.map((m) => m.kind), ["message", "message", "message"], "download: kinds");
  checkEqual(inbox.map((m) => m.senderTag), ["alice", "alice", "alice"], "download: senders");
  checkEqual(inbox.map((m) => m.data), [...texts, plain], "download: contents, oldest first");
  inbox.forEach((m, i) => checkTime(m.time, startedAt, `download: message ${i} time`));
  const ids = inbox.map((m) => m.nonce);
  check(new Set(ids).size === 3, "download: message ids are not distinct");
  // The storage token is h2(to_hpk_b64 + message_id_b64), as in Zax, also for the plaintext
  // message whose id the relay made.
  const bobHpk = await bob.keyRing.getHpk();
  for (let i = 0; i < ids.length; i++) {
    const expected = b64(await NaCl.getInstance().h2(bobHpk + ids[i]));
    checkEqual(tokens[i], expected, `upload: storage token of message ${i}`);
  }

  // bob answers; alice reads it after a fresh handshake (her session is dropped client-side,
  // so the relay sees a second /prove for her hpk).
  const replyToken = await bob.upload(url, "alice", "hi alice");
  alice.clearSession(url);
  seen.push(replyToken, ...await connect(alice, url, difficulty, 1));
  const reply = await alice.download(url);
  checkEqual(reply.map((m) => [m.kind, m.senderTag, m.data]), [["message", "bob", "hi alice"]],
    "alice: downloaded reply");
  checkEqual(await alice.delete(url, [reply[0].nonce]), 0, "alice: messages left after delete");
  checkEqual(await bob.messageStatus(url, replyToken), -2, "messageStatus of a deleted reply");

  // bob deletes one message, then an empty list, then the rest.
  checkEqual(await bob.delete(url, [ids[0]]), 2, "bob: messages left after deleting one");
  checkEqual(await alice.messageStatus(url, tokens[0]), -2, "messageStatus of a deleted message");
  checkStatusAlive(await alice.messageStatus(url, tokens[1]), "messageStatus of a kept message");
  checkEqual(await bob.delete(url, []), 2, "bob: delete of an empty list");
  checkEqual(await bob.delete(url, [ids[0]]), 2, "bob: deleting an already deleted id");
  checkEqual(await bob.delete(url, ids.slice(1)), 0, "bob: messages left after deleting all");
  checkEqual(await bob.count(url), 0, "bob: count after deleting all");
  checkEqual(await bob.download(url), [], "bob: download of an empty mailbox");
  for (const token of tokens) {
    checkEqual(await alice.messageStatus(url, token), -2, "messageStatus after delete");
  }

  // A second client of bob's identity proves again: the relay replaces bob's session, so the
  // first client's next command is a 401 (glow drops its session) and its retry reconnects.
  const bobElsewhere = await Mailbox.fromSecKey("bob-elsewhere", bob.keyRing.getPrivateCommKey());
  seen.push(...await connect(bobElsewhere, url, difficulty, 0));
  const stale = await mustFail(bob.count(url), "bob: count on a replaced session");
  check(stale instanceof GlowNetworkError && stale.status === 401,
    `bob: count on a replaced session: expected a 401, got ${stale}`);
  checkEqual(await bob.count(url), 0, "bob: count after glow reconnects");
  seen.push(...await sessionMaterial(bob, url));

  return {
    results: { uploaded: tokens.length + 1, downloaded: inbox.length + reply.length, difficulty },
    seen,
  };
}

async function filesScenario(url, difficulty) {
  const { alice, bob } = await makePair();
  const seen = [
    ...await connect(alice, url, difficulty, 0),
    ...await connect(bob, url, difficulty, 0),
  ];

  const firstStart = await alice.startFileUpload(url, "bob", { name: "probe.bin", orig_size: 1 });
  const maxChunkSize = firstStart.max_chunk_size;
  check(Number.isInteger(maxChunkSize) && maxChunkSize > SECRETBOX_OVERHEAD,
    `startFileUpload: max_chunk_size ${maxChunkSize}`);
  // max_chunk_size bounds the stored (encrypted) chunk, as in Zax, and glow encrypts each
  // chunk with secretbox, which adds its MAC: the biggest plaintext chunk is 16 bytes less.
  const chunkSize = maxChunkSize - SECRETBOX_OVERHEAD;
  checkEqual(await alice.deleteFile(url, firstStart.uploadID), { status: "OK" },
    "deleteFile of an upload with no chunks");

  const fileBytes = new Uint8Array(randomBytes((FILE_CHUNKS - 1) * chunkSize + 12345));
  const metadata = { name: "interop ✓.bin", orig_size: fileBytes.length, created: 1700000000 };
  const started = await alice.startFileUpload(url, "bob", { ...metadata });
  const { uploadID, storage_token: storageToken, skey } = started;
  check(typeof uploadID === "string" && uploadID.length > 0, "startFileUpload: uploadID");
  checkEqual(started.max_chunk_size, maxChunkSize, "startFileUpload: max_chunk_size");
  seen.push(uploadID, storageToken, firstStart.uploadID, firstStart.storage_token);

  const fileStatus = async (mailbox) => (await mailbox.getFileStatus(url, uploadID)).status;
  checkEqual(await fileStatus(alice), "START", "fileStatus before chunks");
  const parts = [];
  for (let at = 0; at < fileBytes.length; at += chunkSize) {
    parts.push(fileBytes.subarray(at, at + chunkSize));
  }
  checkEqual(parts.length, FILE_CHUNKS, "number of chunks");
  for (let part = 0; part < parts.length; part++) {
    const answer = await alice.uploadFileChunk(url, uploadID, parts[part], part, parts.length,
      skey);
    checkEqual(answer, { status: "OK" }, `uploadFileChunk ${part}`);
    if (part === 0) {
      checkEqual(await fileStatus(alice), "UPLOADING", "fileStatus mid-upload");
    }
  }
  const uploaded = await alice.getFileStatus(url, uploadID);
  checkEqual([uploaded.status, uploaded.total_chunks, uploaded.file_size],
    ["COMPLETE", FILE_CHUNKS, fileBytes.length], "fileStatus after the last chunk");
  check(uploaded.bytes_stored >= fileBytes.length,
    `fileStatus: bytes_stored ${uploaded.bytes_stored} < file size ${fileBytes.length}`);

  // bob finds the file in his mailbox (the first, deleted upload's notice is there too).
  const inbox = await bob.download(url);
  const notices = inbox.filter((m) => m.kind === "file");
  checkEqual(notices.map((m) => m.uploadID), [firstStart.uploadID, uploadID], "bob: file notices");
  const notice = notices[1];
  checkEqual(notice.senderTag, "alice", "file notice sender");
  checkEqual([notice.data.name, notice.data.orig_size, notice.data.created],
    [metadata.name, metadata.orig_size, metadata.created], "file notice metadata");
  checkEqual(notice.data.skey, b64(skey), "file notice: symmetric key");

  const bobStatus = await bob.getFileStatus(url, uploadID);
  checkEqual([bobStatus.status, bobStatus.total_chunks], ["COMPLETE", FILE_CHUNKS],
    "bob: fileStatus");
  const received = [];
  for (let part = 0; part < bobStatus.total_chunks; part++) {
    const chunk = await bob.downloadFileChunk(url, uploadID, part, notice.data.skey);
    check(chunk instanceof Uint8Array, `downloadFileChunk ${part}: did not decrypt`);
    received.push(chunk);
  }
  const downloaded = Buffer.concat(received);
  checkEqual(downloaded.length, fileBytes.length, "downloaded file size");
  checkEqual(sha256Hex(downloaded), sha256Hex(fileBytes), "downloaded file sha256");
  check(Buffer.compare(downloaded, Buffer.from(fileBytes)) === 0, "downloaded file differs");

  // A part that does not exist: glow surfaces the relay's 400.
  const missing = await mustFail(
    bob.downloadFileChunk(url, uploadID, FILE_CHUNKS, notice.data.skey),
    "downloadFileChunk of a part past the end");
  check(missing instanceof GlowNetworkError && missing.status === 400,
    `downloadFileChunk past the end: expected a 400, got ${missing}`);

  checkEqual(await bob.deleteFile(url, uploadID), { status: "OK" }, "bob: deleteFile");
  checkEqual(await fileStatus(alice), "NOT_FOUND", "fileStatus after delete");
  checkEqual(await alice.deleteFile(url, uploadID), { status: "NOT_FOUND" }, "deleteFile twice");
  checkEqual(await alice.uploadFileChunk(url, uploadID, parts[0], 0, parts.length, skey),
    { status: "NOT_FOUND" }, "uploadFileChunk to a deleted file");
  // The relay answers ENC {status: NOT_FOUND} (two lines); glow expects three and rejects it.
  await mustFail(bob.downloadFileChunk(url, uploadID, 0, notice.data.skey),
    "downloadFileChunk of a deleted file");

  checkEqual(await bob.delete(url, notices.map((m) => m.nonce)), 0, "bob: delete the file notices");
  const smallParts = await smallPartsRound(alice, bob, url, maxChunkSize, seen);
  return {
    results: {
      file_size: fileBytes.length, chunks: FILE_CHUNKS, chunk_size: chunkSize,
      max_chunk_size: maxChunkSize, difficulty, small_parts: smallParts,
    },
    seen,
  };
}

// Files cut as other Zax clients may cut them: in many parts far below max_chunk_size, of
// uneven sizes, sent out of order (the part flagged last_chunk in the middle). glow.ts
// numbers the parts and flags the last one; the relay must not derive the number of parts
// from the file's size. Returns how many parts each file had.
const SMALL_CUTS = [
  { size: 918, min: 50, max: 300 },
  { size: 12000, min: 100, max: 400 },
  { size: 1, min: 1, max: 1 },
];

async function smallPartsRound(alice, bob, url, maxChunkSize, seen) {
  const counts = [];
  for (const cut of SMALL_CUTS) {
    const what = `${cut.size}-byte file in ${cut.min}-${cut.max} byte parts`;
    const bytes = new Uint8Array(randomBytes(cut.size));
    const parts = [];
    for (let at = 0; at < bytes.length;) {
      const size = cut.min + Math.floor(Math.random() * (cut.max - cut.min + 1));
      check(size + SECRETBOX_OVERHEAD <= maxChunkSize, `${what}: a part over max_chunk_size`);
      parts.push(bytes.subarray(at, at + size));
      at += size;
    }
    const started = await alice.startFileUpload(url, "bob",
      { name: `small ${cut.size}.bin`, orig_size: bytes.length });
    const { uploadID, skey } = started;
    seen.push(uploadID, started.storage_token);
    // Odd parts first, then even ones, each from the end: the last part comes early.
    const order = [...parts.keys()].sort((a, b) => (b % 2) - (a % 2) || b - a);
    let stored = 0;
    for (const [sent, part] of order.entries()) {
      checkEqual(await alice.uploadFileChunk(url, uploadID, parts[part], part, parts.length, skey),
        { status: "OK" }, `${what}: uploadFileChunk ${part}`);
      stored += parts[part].length + SECRETBOX_OVERHEAD;
      if (sent === Math.floor(order.length / 2) && sent < order.length - 1) {
        const mid = await alice.getFileStatus(url, uploadID);  // what a resuming client reads
        checkEqual([mid.status, mid.total_chunks, mid.bytes_stored], ["UPLOADING", sent + 1, stored],
          `${what}: fileStatus mid-upload`);
      }
    }
    const status = await bob.getFileStatus(url, uploadID);
    checkEqual([status.status, status.total_chunks, status.file_size, status.bytes_stored],
      ["COMPLETE", parts.length, bytes.length, bytes.length + SECRETBOX_OVERHEAD * parts.length],
      `${what}: fileStatus after the last part`);
    const received = [];
    for (let part = 0; part < status.total_chunks; part++) {
      const chunk = await bob.downloadFileChunk(url, uploadID, part, skey);
      check(chunk instanceof Uint8Array, `${what}: downloadFileChunk ${part} did not decrypt`);
      received.push(chunk);
    }
    check(Buffer.compare(Buffer.concat(received), Buffer.from(bytes)) === 0,
      `${what}: the downloaded file differs`);
    checkEqual(await bob.deleteFile(url, uploadID), { status: "OK" }, `${what}: deleteFile`);
    counts.push(parts.length);
  }
  return counts;
}

// Dead drops between our `relay` command and glow.ts, both ways (tests/test_interop_glow.py,
// test_glow_drops). The spec file (argv[4]) names glow's identity (bob), our user's public key
// (alice) and the files alice dropped for bob. bob collects and checks them (the paper's
// section 3.4.1 metadata, chunks in secretbox under skey), deletes them, then drops a file
// and a text for alice, which the pytest side collects with `relay receive`.
const PAPER_FIELDS = ["name", "orig_size", "skey", "md5", "created", "modified", "attrs"];

async function dropsScenario(url, difficulty, specPath) {
  const spec = JSON.parse(readFileSync(specPath, "utf8"));
  const bob = await Mailbox.fromSecKey("bob", spec.bob_secret);
  await bob.keyRing.addGuest("alice", spec.alice_public);
  const seen = [...await connect(bob, url, difficulty, spec.expected_messages)];

  const inbox = await bob.download(url);
  const notices = inbox.filter((m) => m.kind === "file");
  checkEqual(notices.map((m) => m.senderTag), notices.map(() => "alice"), "drop: senders");
  checkEqual(notices.map((m) => m.data.name).sort(), spec.files.map((f) => f.name).sort(),
    "drop: file names");
  const received = [];
  for (const expected of spec.files) {
    const notice = notices.find((m) => m.data.name === expected.name);
    for (const field of PAPER_FIELDS) {
      check(field in notice.data, `drop: ${expected.name}: metadata has no ${field}`);
    }
    checkEqual([notice.data.orig_size, notice.data.md5, notice.data.attrs],
      [expected.size, expected.md5, expected.attrs], `drop: ${expected.name}: metadata`);
    check(Number.isInteger(notice.data.modified) && notice.data.modified > 1e9,
      `drop: ${expected.name}: modified ${notice.data.modified}`);
    const status = await bob.getFileStatus(url, notice.uploadID);
    checkEqual(status.status, "COMPLETE", `drop: ${expected.name}: status`);
    const chunks = [];
    for (let part = 0; part < status.total_chunks; part++) {
      const chunk = await bob.downloadFileChunk(url, notice.uploadID, part, notice.data.skey);
      check(chunk instanceof Uint8Array, `drop: ${expected.name}: chunk ${part} did not open`);
      chunks.push(chunk);
    }
    const bytes = Buffer.concat(chunks);
    checkEqual(sha256Hex(bytes), expected.sha256, `drop: ${expected.name}: sha256`);
    checkEqual(createHash("md5").update(bytes).digest("hex"), expected.md5,
      `drop: ${expected.name}: md5`);
    checkEqual(await bob.deleteFile(url, notice.uploadID), { status: "OK" },
      `drop: ${expected.name}: deleteFile`);
    received.push({ name: expected.name, chunks: status.total_chunks });
    seen.push(notice.uploadID);
  }
  // Our manifest (folders, empty files, the drop's text) is a boxed message glow can read.
  const manifests = inbox.filter((m) => m.kind === "message").map((m) => JSON.parse(m.data));
  checkEqual(manifests.map((m) => m.type), ["relay-drop"], "drop: manifest message");
  checkEqual(manifests[0].text, spec.text, "drop: the drop's text");
  checkEqual(await bob.delete(url, inbox.map((m) => m.nonce)), 0, "bob: mailbox emptied");

  // bob -> alice: a file with the paper's metadata, and a text.
  const reply = new Uint8Array(randomBytes(spec.reply_size));
  const metadata = {
    name: spec.reply_name, orig_size: reply.length,
    md5: createHash("md5").update(reply).digest("hex"),
    created: 1700000000, modified: 1700000001, attrs: "640",
  };
  const started = await bob.startFileUpload(url, "alice", metadata);
  const chunkSize = started.max_chunk_size - SECRETBOX_OVERHEAD;
  const parts = Math.ceil(reply.length / chunkSize);
  for (let part = 0; part < parts; part++) {
    const answer = await bob.uploadFileChunk(url, started.uploadID,
      reply.subarray(part * chunkSize, (part + 1) * chunkSize), part, parts, started.skey);
    checkEqual(answer, { status: "OK" }, `reply chunk ${part}`);
  }
  seen.push(started.uploadID, started.storage_token);
  seen.push(await bob.upload(url, "alice", spec.reply_text));
  return {
    results: {
      received, reply: { name: spec.reply_name, sha256: sha256Hex(reply), parts }, difficulty,
    },
    seen,
  };
}

// The relay's difficulty moves (adaptive proof of work, test_interop_pow.py): alice after
// alice (fresh identities, so each is a full handshake) connects and leaves bob a message,
// `pace` ms apart, taking whatever difficulty /start_session announces, until one saw at
// least `high` bits and a later one the floor again (or `seconds` pass). bob then reads them
// all. <expected-difficulty> is the floor. Extra arguments: high, pace, seconds.
async function movingScenario(url, floor, highText, paceText, secondsText) {
  const [high, pace, seconds] = [Number(highText), Number(paceText), Number(secondsText)];
  check([high, pace, seconds].every(Number.isFinite), "moving: high, pace and seconds needed");
  const bob = await Mailbox.fromSeed("bob", randomBytes(32));
  const seen = [...await connect(bob, url, floor, 0)];
  const difficulties = [];
  const deadline = Date.now() + seconds * 1000;
  let highAt = -1;
  // bob downloads one page: stay under the relay's download_page (100).
  while (Date.now() < deadline && difficulties.length < 90) {
    const alice = await Mailbox.fromSeed("alice", randomBytes(32));
    await alice.keyRing.addGuest("bob", bob.keyRing.getPubCommKey());
    await bob.keyRing.addGuest(`alice ${difficulties.length + 1}`, alice.keyRing.getPubCommKey());
    checkEqual(await alice.connectToRelay(url), 0, "alice: connectToRelay message count");
    const difficulty = alice.relayFactory.getInstance(url).difficulty;
    check(Number.isInteger(difficulty) && difficulty >= floor,
      `alice: difficulty ${difficulty} below the floor ${floor}`);
    difficulties.push(difficulty);
    await alice.upload(url, "bob", `message ${difficulties.length}`);
    if (highAt < 0 && difficulty >= high) highAt = difficulties.length - 1;
    if (highAt >= 0 && difficulty === floor) break;
    await new Promise((resolve) => setTimeout(resolve, pace));
  }
  const inbox = await bob.download(url);
  checkEqual(inbox.map((m) => m.data), difficulties.map((_, i) => `message ${i + 1}`),
    "bob: every alice's message, oldest first");
  seen.push(...await sessionMaterial(bob, url));
  return { results: { difficulties }, seen };
}

const SCENARIOS = {
  messages: messagesScenario, files: filesScenario, drops: dropsScenario, moving: movingScenario,
};

async function main(argv) {
  const [url, name, difficultyText, ...extra] = argv;
  const scenario = SCENARIOS[name];
  const difficulty = Number(difficultyText);
  if (!url || !scenario || !Number.isInteger(difficulty)) {
    const names = Object.keys(SCENARIOS).join("|");
    throw new Mismatch(`usage: glow_scenario.mjs <relay-url> <${names}> <difficulty>`);
  }
  NaCl.setDefaultInstance();
  CryptoStorage.setStorageDriver(new InMemoryStorage());
  const { results, seen } = await scenario(url.replace(/\/+$/, ""), difficulty, ...extra);
  console.log(JSON.stringify({ scenario: name, ok: true, ...results, relay_must_not_log: seen }));
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (error) => {
    const kind = error instanceof Mismatch ? "mismatch" : "error";
    console.error(`glow_scenario ${process.argv[3]}: ${kind}: ${error?.stack ?? error}`);
    process.exit(1);
  },
);
