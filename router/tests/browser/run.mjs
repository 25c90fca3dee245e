#!/usr/bin/env node
// Real-browser end-to-end test of kaskade: one headless Chromium, two pages.
// The publisher page sends its fake camera and microphone to the router, the
// subscriber page receives both through the router plus a data channel.
//
//   KASKADE_BIN=/path/to/kaskade node run.mjs     full scenario (starts the daemon itself)
//   KASKADE_BIN=... node run.mjs --scenario simulcast
//                                                 the publisher sends three simulcast layers;
//                                                 UpdateSubscription must move the subscriber
//                                                 to the lowest, highest and middle layer
//   node run.mjs --self-check                     browser + protos only, no daemon
//
// Environment:
//   KASKADE_BIN            the daemon binary (required for the full scenario)
//   KASKADE_CHROMIUM       the browser (default /usr/bin/chromium)
//   KASKADE_E2E_TIMEOUT_S  hard limit for the whole run (default 120)
//   KASKADE_E2E_MEDIA_S    how long media may take to flow once signalled (default 45)
//   KASKADE_E2E_SWITCH_S   simulcast: how long a switch to the lowest or middle layer may take (default 20)
//   KASKADE_E2E_TOP_LAYER_S  simulcast: the same for the top layer (default 45)
//   KASKADE_E2E_SETTLE_MS  simulcast: how long the subscription must be quiet on the previous
//                          step's layer before the next switch (default 1000; 0 = back to back)
//   KASKADE_E2E_SETTLE_LIMIT_S  simulcast: how long settling may take (default 20)
//   KASKADE_E2E_VERBOSE=1  print page console logs and daemon stderr even on success
//   KASKADE_LOG_LEVEL      the daemon's log filter (its default is "info"); all
//                          KASKADE_* variables reach the daemon (KASKADE_LOG_IPS
//                          defaults to true here: addresses are loopback only)
//
// Exit status: 0 on success, 1 on a test failure, 2 on the hard timeout.

import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTO_DIR = path.resolve(HERE, '../../../protocol/proto');
const PROTO_FILES = ['kaskade/v1/room.proto', 'kaskade/v1/session.proto'];
const CHROMIUM = process.env.KASKADE_CHROMIUM || '/usr/bin/chromium';
const SELF_CHECK = process.argv.includes('--self-check');
const SCENARIO = (() => {
  const i = process.argv.indexOf('--scenario');
  const eq = process.argv.find((a) => a.startsWith('--scenario='));
  return eq ? eq.slice('--scenario='.length) : i >= 0 ? process.argv[i + 1] : 'basic';
})();
const SCENARIOS = ['basic', 'simulcast'];
const VERBOSE = process.env.KASKADE_E2E_VERBOSE === '1';
const TOTAL_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_TIMEOUT_S || 120);
const MEDIA_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_MEDIA_S || 45);
const READY_TIMEOUT_MS = 20_000;
const RPC_TIMEOUT_MS = 10_000;
const POLL_MS = 500;
const ROOM_ID = `e2e-${process.pid}-${Date.now()}`;

const CHROMIUM_ARGS = [
  '--headless=new',
  '--no-sandbox',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  // Real IP addresses in ICE candidates, not mDNS ".local" names: the router
  // cannot resolve those. Chromium keeps only the LAST --disable-features
  // switch and Playwright puts its own list before ours, so ours repeats
  // Playwright's (1.65) list.
  '--disable-features=' + [
    'WebRtcHideLocalIpsWithMdns',
    'AvoidUnnecessaryBeforeUnloadCheckSync', 'DestroyProfileOnBrowserClose', 'HttpsUpgrades',
    'HttpsFirstBalancedModeAutoEnable', 'LensOverlay', 'MediaRouter', 'PaintHolding',
    'ThirdPartyStoragePartitioning', 'AvoidCorsURLLoaderRestartOnRedirect', 'OptimizationHints',
    'NetworkTimeServiceQuerying', 'AimEnabled', 'PreconnectToSearch',
  ].join(','),
  '--autoplay-policy=no-user-gesture-required',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const t0 = Date.now();
const since = () => ((Date.now() - t0) / 1000).toFixed(2);
const log = (...args) => console.log(`[e2e +${since()}s]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- diagnostics
const diag = {
  daemonStderr: [], // tail of the daemon's stderr (and stray stdout) lines
  consoles: { pub: [], sub: [] },
  lastStats: null,
  daemonExit: null,
  sdp: {}, // label -> SDP, every description exchanged
  events: null, // WatchEvents messages, when a scenario watches the room
};
const TAIL_LINES = 300;
function pushTail(arr, line, max = TAIL_LINES) {
  arr.push(line);
  if (arr.length > max) arr.splice(0, arr.length - max);
}

function dumpDiagnostics(reason) {
  const out = [];
  out.push('');
  out.push('==================== browser e2e FAILED ====================');
  out.push(`scenario: ${SELF_CHECK ? 'self-check' : SCENARIO}`);
  out.push(`reason: ${reason}`);
  if (diag.daemonExit) out.push(`daemon exited: ${diag.daemonExit}`);
  out.push('');
  out.push('---- last getStats summary ----');
  out.push(diag.lastStats ? JSON.stringify(diag.lastStats, null, 2) : '(none taken)');
  for (const role of ['pub', 'sub']) {
    out.push('');
    out.push(`---- ${role === 'pub' ? 'publisher' : 'subscriber'} page console (${diag.consoles[role].length} lines) ----`);
    out.push(...(diag.consoles[role].length ? diag.consoles[role] : ['(empty)']));
  }
  if (diag.events) {
    out.push('');
    out.push(`---- WatchEvents (${diag.events.length} events) ----`);
    for (const e of diag.events) out.push(`${e.at_unix_ms} ${e.kind} ${JSON.stringify(e[e.kind])}`);
  }
  for (const [label, sdp] of Object.entries(diag.sdp)) {
    out.push('');
    out.push(`---- SDP: ${label} ----`);
    out.push(sdp.trimEnd());
  }
  out.push('');
  out.push(`---- daemon stderr, last ${diag.daemonStderr.length} lines ----`);
  out.push(...(diag.daemonStderr.length ? diag.daemonStderr : ['(empty)']));
  out.push('============================================================');
  console.error(out.join('\n'));
}

// ---------------------------------------------------------------- SDP helpers
function candidatesOf(sdp) {
  return sdp
    .split(/\r?\n/)
    .filter((l) => l.startsWith('a=candidate:'))
    .map((l) => l.slice(2));
}
function mediaLinesOf(sdp) {
  return sdp
    .split(/\r?\n/)
    .filter((l) => l.startsWith('m='))
    .map((l) => l.split(' ')[0].slice(2));
}
function describeOffer(label, sdp, { all = true } = {}) {
  diag.sdp[label] = sdp;
  const cands = candidatesOf(sdp);
  const loop = cands.filter((c) => c.includes(' 127.0.0.1 ')).length;
  log(`${label}: m-lines [${mediaLinesOf(sdp).join(', ')}], ${cands.length} candidate(s), ${loop} on 127.0.0.1`);
  for (const c of all ? cands : cands.filter((c) => c.includes(' 127.0.0.1 '))) log(`  ${c}`);
  if (cands.some((c) => / [0-9a-f-]+\.local /i.test(c))) {
    log(`  WARNING: ${label} has mDNS (.local) candidates; the router cannot resolve them`);
  }
  return cands;
}

// ---------------------------------------------------------------- protos/gRPC
function loadApi() {
  if (!existsSync(PROTO_DIR)) throw new Error(`proto directory not found: ${PROTO_DIR}`);
  const def = protoLoader.loadSync(PROTO_FILES, {
    includeDirs: [PROTO_DIR],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(def);
  const v1 = pkg.kaskade && pkg.kaskade.v1;
  if (!v1 || !v1.RoomService || !v1.SessionService) {
    throw new Error('kaskade.v1.RoomService / SessionService not found in the protos');
  }
  const services = Object.keys(def)
    .filter((k) => def[k] && typeof def[k] === 'object' && Object.values(def[k]).some((m) => m && m.path))
    .map((k) => `${k}(${Object.keys(def[k]).join(', ')})`);
  return { v1, services };
}

function rpc(client, service, method, request, { quiet = false } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    client[method](request, { deadline: Date.now() + RPC_TIMEOUT_MS }, (err, resp) => {
      if (err) {
        const code = grpc.status[err.code] || err.code;
        reject(new Error(`${service}.${method} failed: ${code}: ${err.details || err.message}`));
      } else {
        if (!quiet) log(`${service}.${method} ok in ${Date.now() - started} ms`);
        resolve(resp);
      }
    });
  });
}

// ---------------------------------------------------------------- daemon
function startDaemon(bin) {
  const args = [
    'serve',
    '--control-listen', '127.0.0.1:0',
    '--metrics-listen', '127.0.0.1:0',
    '--media-bind', '127.0.0.1',
    '--media-port-start', '0',
    '--workers', '2',
  ];
  const env = { ...process.env };
  // Only loopback addresses in this test: let the daemon log them, it helps
  // when ICE fails. KASKADE_LOG_LEVEL (e.g. "info,kaskade_router=debug") passes through.
  if (!env.KASKADE_LOG_IPS) env.KASKADE_LOG_IPS = 'true';
  if (!env.NO_COLOR) env.NO_COLOR = '1'; // plain log lines for the diagnostics
  log(`starting daemon: ${bin} ${args.join(' ')}`);
  // Its own process group, so a wrapper script and its children stop too.
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      diag.daemonExit = `code=${code} signal=${signal} at +${since()}s`;
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      diag.daemonExit = `spawn error: ${err.message}`;
      resolve({ code: null, signal: null, error: err });
    });
  });
  readline.createInterface({ input: child.stderr }).on('line', (l) => pushTail(diag.daemonStderr, l));

  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`daemon did not print KASKADE_READY within ${READY_TIMEOUT_MS / 1000} s`)),
      READY_TIMEOUT_MS,
    );
    let seen = false;
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (!seen && line.startsWith('KASKADE_READY ')) {
        seen = true;
        clearTimeout(timer);
        try {
          const info = JSON.parse(line.slice('KASKADE_READY '.length));
          if (typeof info.control !== 'string' || !Array.isArray(info.media)) {
            throw new Error('missing "control" or "media"');
          }
          resolve(info);
        } catch (e) {
          reject(new Error(`cannot parse the ready line ${JSON.stringify(line)}: ${e.message}`));
        }
      } else {
        pushTail(diag.daemonStderr, `(stdout) ${line}`);
      }
    });
    exited.then(({ code, signal, error }) => {
      clearTimeout(timer);
      reject(new Error(error
        ? `cannot start the daemon ${bin}: ${error.message}`
        : `daemon exited before it was ready (code=${code} signal=${signal})`));
    });
  });
  // A rejection after success must not become an unhandled rejection.
  ready.catch(() => {});
  return { child, ready, exited };
}

function signalDaemon(child, sig) {
  try {
    process.kill(-child.pid, sig); // the whole process group
  } catch {
    try {
      child.kill(sig);
    } catch {
      // already gone
    }
  }
}

async function stopDaemon(d) {
  if (!d || !d.child.pid || d.stopping) return;
  d.stopping = true;
  const { child, exited } = d;
  if (child.exitCode !== null || child.signalCode !== null) {
    signalDaemon(child, 'SIGKILL'); // leftovers of a wrapper, if any
    return;
  }
  const started = Date.now();
  signalDaemon(child, 'SIGTERM');
  const res = await Promise.race([exited, sleep(5000).then(() => null)]);
  if (res) {
    log(`daemon exited ${Date.now() - started} ms after SIGTERM (code=${res.code} signal=${res.signal})`);
  } else {
    log('WARNING: daemon still running 5 s after SIGTERM; sending SIGKILL');
    signalDaemon(child, 'SIGKILL');
    await Promise.race([exited, sleep(2000)]);
  }
  signalDaemon(child, 'SIGKILL');
}

// ---------------------------------------------------------------- page server
function startPageServer() {
  const files = {
    '/': ['index.html', 'text/html; charset=utf-8'],
    '/index.html': ['index.html', 'text/html; charset=utf-8'],
    '/page.js': ['page.js', 'text/javascript; charset=utf-8'],
  };
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, 'http://x').pathname;
    if (pathname === '/favicon.ico') {
      res.writeHead(204);
      res.end();
      return;
    }
    const entry = files[pathname];
    if (!entry) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    res.writeHead(200, { 'content-type': entry[1], 'cache-control': 'no-store' });
    res.end(readFileSync(path.join(HERE, entry[0])));
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      resolve({ server, url: `http://127.0.0.1:${port}/` });
    });
  });
}

// ---------------------------------------------------------------- browser
async function launchBrowser(userDataDir) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: run \`bash .ci/run\` or \`apt-get install chromium\` (or set KASKADE_CHROMIUM)`);
  }
  log(`launching ${CHROMIUM}`);
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 30_000,
    env: { ...process.env, HOME: process.env.HOME || userDataDir },
  });
}

async function openPage(context, role, url, existing) {
  const page = existing || (await context.newPage());
  page.on('console', (m) => {
    const line = `[${since()}s] ${m.type()}: ${m.text()}`;
    pushTail(diag.consoles[role], line, 500);
    if (VERBOSE) console.log(`  (${role}) ${line}`);
  });
  page.on('pageerror', (e) => pushTail(diag.consoles[role], `[${since()}s] pageerror: ${e.message}`, 500));
  page.on('crash', () => pushTail(diag.consoles[role], `[${since()}s] PAGE CRASHED`, 500));
  await page.goto(url, { waitUntil: 'load', timeout: 15_000 });
  await page.waitForFunction(() => !!window.kaskade, null, { timeout: 10_000 });
  return page;
}

async function collectStats(pub, sub) {
  const [p, s] = await Promise.all([
    pub.evaluate(() => window.kaskade.stats()).catch((e) => ({ error: String(e) })),
    sub.evaluate(() => window.kaskade.stats()).catch((e) => ({ error: String(e) })),
  ]);
  diag.lastStats = { at: `+${since()}s`, publisher: p, subscriber: s };
  return { p, s };
}

function progressLine(p, s) {
  const v = (s && s.inVideo) || {};
  const a = (s && s.inAudio) || {};
  const pv = (p && p.outVideo) || {};
  const pa = (p && p.outAudio) || {};
  return (
    `pub[${p && p.connectionState} sent v=${pv.packetsSent || 0}pkts/${pv.framesEncoded || 0}fr a=${pa.packetsSent || 0}pkts] ` +
    `sub[${s && s.connectionState} dc=${s && s.dataChannel} v=${v.packetsReceived || 0}pkts/${v.framesDecoded || 0}fr ` +
    `a=${a.packetsReceived || 0}pkts/${a.totalSamplesReceived || 0}smp]`
  );
}

// ---------------------------------------------------------------- scenarios
async function selfCheck(ctx) {
  const { services } = loadApi();
  log(`protos loaded from ${PROTO_DIR}: ${services.join('; ')}`);
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.context = await launchBrowser(ctx.userDataDir);
  const pub = await openPage(ctx.context, 'pub', pageSrv.url, ctx.context.pages()[0]);
  const sub = await openPage(ctx.context, 'sub', pageSrv.url);
  const offer = await pub.evaluate(() => window.kaskade.publish());
  log(`publisher captured: ${offer.tracks.map((t) => `${t.kind} "${t.label}"`).join(', ')}; gathering ${offer.gathering}`);
  const pubCands = describeOffer('publisher offer', offer.sdp);
  const subOffer = await sub.evaluate(() => window.kaskade.prepareSubscriber());
  const subCands = describeOffer('subscriber offer', subOffer.sdp);
  for (const [label, cands] of [['publisher', pubCands], ['subscriber', subCands]]) {
    if (!cands.some((c) => c.includes(' 127.0.0.1 '))) {
      throw new Error(`the ${label} offer has no 127.0.0.1 host candidate`);
    }
  }
  console.log(`browser self-check: ok (${pubCands.length}+${subCands.length} candidates, 127.0.0.1 present, ${services.length} services) in ${since()}s`);
}

// Starts the daemon, the browser with both pages and the room.
async function startRoom(ctx) {
  const bin = process.env.KASKADE_BIN;
  if (!bin) throw new Error('KASKADE_BIN is not set (path to the kaskade binary)');
  if (!existsSync(bin)) throw new Error(`KASKADE_BIN=${bin} does not exist (build it with cargo build -p kaskade-router)`);
  const { v1 } = loadApi();

  ctx.daemon = startDaemon(bin);
  const ready = await ctx.daemon.ready;
  log(`daemon ready: control=${ready.control} metrics=${ready.metrics} media=${ready.media.join(',')}`);

  ctx.rooms = new v1.RoomService(ready.control, grpc.credentials.createInsecure());
  ctx.sessions = new v1.SessionService(ready.control, grpc.credentials.createInsecure());
  const call = (svc, method, req, opts) =>
    rpc(svc === 'RoomService' ? ctx.rooms : ctx.sessions, svc, method, req, opts);

  // Start the browser while nothing else is needed from it.
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.context = await launchBrowser(ctx.userDataDir);
  const pub = await openPage(ctx.context, 'pub', pageSrv.url, ctx.context.pages()[0]);
  const sub = await openPage(ctx.context, 'sub', pageSrv.url);
  ctx.pages = { pub, sub };
  log(`pages open at ${pageSrv.url}`);

  await call('RoomService', 'CreateRoom', { room_id: ROOM_ID, max_sessions: 0 });
  return { pub, sub, call };
}

// Page A publishes: camera and microphone, or (simulcast) the camera alone
// as three layers. Returns the session, the tracks the router saw and what
// the page captured.
async function startPublisher(ctx, { pub, call }, { simulcast = false } = {}) {
  const pubOffer = await pub.evaluate((opts) => window.kaskade.publish(opts), { simulcast });
  log(`publisher captured: ${pubOffer.tracks.map((t) => `${t.kind} "${t.label}"${t.width ? ` ${t.width}x${t.height}@${t.frameRate}` : ''}`).join(', ')}`);
  if (simulcast) log(`publisher encodings: ${JSON.stringify(pubOffer.encodings)}`);
  describeOffer('publisher offer', pubOffer.sdp, { all: false });
  const pubSession = await call('SessionService', 'CreateSession', {
    room_id: ROOM_ID, participant_id: 'pub', sdp_offer: pubOffer.sdp, metadata: '',
  });
  describeOffer('router answer to publisher', pubSession.sdp_answer);
  await pub.evaluate((sdp) => window.kaskade.acceptAnswer(sdp), pubSession.sdp_answer);
  const tracks = pubSession.tracks || [];
  log(`publisher session ${pubSession.session_id}: tracks ${tracks.map((t) => `${t.track_id}(${t.kind}, mid ${t.mid}${t.rids && t.rids.length ? `, rids ${t.rids.join('/')}` : ''})`).join(', ') || '(none)'}`);
  return { session: pubSession, tracks, captured: pubOffer.tracks };
}

// Page B: a data channel only, then the router's offer with the tracks.
async function startSubscriber(ctx, { sub, call }, trackIds) {
  const subOffer = await sub.evaluate(() => window.kaskade.prepareSubscriber());
  describeOffer('subscriber offer', subOffer.sdp, { all: false });
  const subSession = await call('SessionService', 'CreateSession', {
    room_id: ROOM_ID, participant_id: 'sub', sdp_offer: subOffer.sdp, metadata: '',
  });
  describeOffer('router answer to subscriber', subSession.sdp_answer);
  await sub.evaluate((sdp) => window.kaskade.acceptAnswer(sdp), subSession.sdp_answer);
  log(`subscriber session ${subSession.session_id}`);

  const subscribed = await call('SessionService', 'Subscribe', {
    session_id: subSession.session_id, track_ids: trackIds,
  });
  log(`subscriptions: ${(subscribed.subscriptions || []).map((s) => `${s.track_id}→mid ${s.mid}`).join(', ') || '(none)'}`);
  describeOffer('router offer to subscriber', subscribed.sdp_offer);
  const subAnswer = await sub.evaluate((sdp) => window.kaskade.answerOffer(sdp), subscribed.sdp_offer);
  diag.sdp['subscriber answer'] = subAnswer;
  await call('SessionService', 'SetAnswer', { session_id: subSession.session_id, sdp_answer: subAnswer });
  return subSession;
}

// Media must flow: video frames decoded and (unless audio is false) audio
// packets received, both above a floor and growing over two consecutive
// polls (so not a single burst); and the data channel must have opened.
async function waitForMedia(ctx, { audio: needAudio = true, line = progressLine } = {}) {
  const { pub, sub } = ctx.pages;
  const mediaStart = Date.now();
  const deadline = mediaStart + MEDIA_TIMEOUT_MS;
  let prev = null;
  let growing = 0; // consecutive polls in which the counters grew
  let lastProgress = 0;
  for (;;) {
    checkDaemon(ctx);
    const { p, s } = await collectStats(pub, sub);
    const frames = (s && s.inVideo && s.inVideo.framesDecoded) || 0;
    const audio = (s && s.inAudio && s.inAudio.packetsReceived) || 0;
    const audioOk = !needAudio || audio > 10;
    const dcOpen = !!(s && s.dataChannelOpened);
    if (Date.now() - lastProgress >= 3000) {
      log(line(p, s));
      lastProgress = Date.now();
    }
    growing = prev && frames > prev.frames && (!needAudio || audio > prev.audio) ? growing + 1 : 0;
    if (dcOpen && frames > 10 && audioOk && growing >= 2) {
      log(line(p, s));
      return {
        frames,
        audio,
        mediaSecs: ((Date.now() - mediaStart) / 1000).toFixed(1),
        pair: s.pair,
        videoCodec: s.inVideo.codec,
        audioCodec: s.inAudio && s.inAudio.codec,
      };
    }
    if (Date.now() > deadline) {
      const missing = [];
      if (!dcOpen) missing.push(`the subscriber's data channel never opened (state ${s && s.dataChannel})`);
      if (frames <= 10) missing.push(`video framesDecoded=${frames} (need > 10)`);
      else if (prev && frames <= prev.frames) missing.push(`video framesDecoded stopped growing at ${frames}`);
      if (needAudio) {
        if (audio <= 10) missing.push(`audio packetsReceived=${audio} (need > 10)`);
        else if (prev && audio <= prev.audio) missing.push(`audio packetsReceived stopped growing at ${audio}`);
      }
      throw new Error(`media did not flow within ${MEDIA_TIMEOUT_MS / 1000} s: ${missing.join('; ')}`);
    }
    prev = { frames, audio };
    await sleep(POLL_MS);
  }
}

function checkDaemon(ctx) {
  if (ctx.daemon.child.exitCode !== null || ctx.daemon.child.signalCode !== null) {
    throw new Error(`the daemon died during the test (${diag.daemonExit})`);
  }
}

async function fullScenario(ctx) {
  const room = await startRoom(ctx);
  const { tracks } = await startPublisher(ctx, room);
  const kinds = tracks.map((t) => t.kind);
  if (!kinds.includes('TRACK_KIND_VIDEO') || !kinds.includes('TRACK_KIND_AUDIO')) {
    let inRoom = '';
    try {
      await sleep(1000);
      const r = await room.call('RoomService', 'GetRoom', { room_id: ROOM_ID });
      inRoom = `; GetRoom 1 s later lists tracks ${JSON.stringify((r.room && r.room.tracks) || [])}`;
    } catch (e) {
      inRoom = `; GetRoom failed too: ${e.message}`;
    }
    throw new Error(`CreateSession for the publisher should list one audio and one video track, got ${JSON.stringify(tracks)}${inRoom}`);
  }
  await startSubscriber(ctx, room, tracks.map((t) => t.track_id));
  return waitForMedia(ctx);
}

// ---------------------------------------------------------------- simulcast
// Page A publishes the camera as three layers (1/4, 1/2 and full size of
// 1280x720); page B subscribes; UpdateSubscription(max_spatial_layer) to the
// lowest, the highest and the middle layer must each change the width of
// the frames B decodes. The time from the call to the new width in B's
// getStats is measured.

// getStats of both pages during a switch (short, so polled often: the figure
// is at most this much late, plus one getStats).
const SWITCH_POLL_MS = 25;
// Before each switch the subscription must have been quiet this long: the
// router's current layer is its target and no LayerChanged came. Chrome
// ignores a keyframe request (PLI) that comes within 300 ms of the previous
// one, for any of its layers, and the router asks again only after its own
// retry interval, so a switch right after another one measures that instead.
// 0 = back to back, no waiting.
const SETTLE_MS = Number(process.env.KASKADE_E2E_SETTLE_MS ?? 1000);
const SETTLE_POLL_MS = 100;
const SETTLE_LIMIT_MS = 1000 * Number(process.env.KASKADE_E2E_SETTLE_LIMIT_S || 20);
const ROUTER_VIEW_EVERY_MS = 2000;
const SIMULCAST_STEPS = [
  { layer: 0, timeoutMs: 1000 * Number(process.env.KASKADE_E2E_SWITCH_S || 20) },
  // Chrome only starts the top layer once its own uplink estimate has grown,
  // and the router moves up only once its downlink estimate allows.
  { layer: 2, timeoutMs: 1000 * Number(process.env.KASKADE_E2E_TOP_LAYER_S || 45) },
  { layer: 1, timeoutMs: 1000 * Number(process.env.KASKADE_E2E_SWITCH_S || 20) },
];

// Chrome may round a layer's size (1276 instead of 1280, say).
const widthMatches = (w, expected) => !!w && Math.abs(w - expected) <= Math.max(4, 0.03 * expected);

const RID_ORDER = ['q', 'h', 'f']; // page.js's layers, lowest first
const fmtKbps = (bps) => (bps === undefined || bps === null ? '?' : `${Math.round(bps / 1000)}kbps`);

// The router's view of the subscription: an UpdateSubscription that sets
// nothing changes nothing and returns the state.
function fmtView(st) {
  if (!st) return '(no state)';
  return `current ${st.current_spatial_layer} target ${st.target_spatial_layer} max ${st.max_spatial_layer} (temporal ${st.max_temporal_layer}${st.paused ? ', paused' : ''}, priority ${st.priority})`;
}

function publisherLayers(p) {
  const layers = (p && p.outVideo && p.outVideo.layers) || [];
  const sent = (p && p.pair && p.pair.availableOutgoingBitrate);
  const each = layers
    .slice()
    .sort((a, b) => RID_ORDER.indexOf(a.rid) - RID_ORDER.indexOf(b.rid))
    .map((l) => `${l.rid}:${l.size || '-'}${l.active === false ? '(inactive)' : ''}@${l.framesPerSecond || 0}fps/${fmtKbps(l.targetBitrate)}`)
    .join(' ');
  const limited = layers.map((l) => l.qualityLimitationReason).filter((r) => r && r !== 'none');
  return `pub[${each || 'no layers yet'}; uplink estimate ${fmtKbps(sent)}${limited.length ? `; limited by ${[...new Set(limited)].join(',')}` : ''}]`;
}

function simulcastLine(p, s) {
  const v = (s && s.inVideo) || {};
  return `${publisherLayers(p)} sub[${s && s.connectionState} ${v.size || '-'} ${v.framesDecoded || 0}fr ` +
    `${v.framesPerSecond || 0}fps lost=${v.packetsLost || 0} pli=${v.pliCount || 0}]`;
}

// Collects the room's events; prints layer events as they come.
function watchRoom(ctx) {
  const events = [];
  diag.events = events;
  const stream = ctx.sessions.WatchEvents({ room_id: ROOM_ID });
  ctx.watch = stream;
  stream.on('data', (ev) => {
    events.push(ev);
    const at = Number(ev.at_unix_ms);
    if (ev.kind === 'layer_changed') {
      const c = ev.layer_changed;
      log(`event LayerChanged ${c.old_layer} -> ${c.new_layer} (${c.reason}) track ${c.track_id} session ${c.session_id} @${at}`);
    } else if (ev.kind === 'layer_demand') {
      const d = ev.layer_demand;
      log(`event LayerDemand layer ${d.layer} rid ${d.rid} wanted=${d.wanted}`);
    } else if (VERBOSE) {
      log(`event ${ev.kind} ${JSON.stringify(ev[ev.kind])}`);
    }
  });
  stream.on('error', (e) => {
    if (e.code !== grpc.status.CANCELLED) log(`WatchEvents ended with ${grpc.status[e.code] || e.code}: ${e.details || e.message}`);
  });
  return events;
}

async function readView(room, subId, trackId) {
  const r = await room.call('SessionService', 'UpdateSubscription', { session_id: subId, track_id: trackId }, { quiet: true });
  return r.subscription;
}

// Waits until the subscription has been quiet for SETTLE_MS (see above) on
// a layer `expect` accepts: the layer the previous step asked for, or for
// the first step any layer above the lowest (so that step is a real switch;
// the default preference is the top layer and loopback has room for it). A
// subscriber that leaves that layer by itself, on bandwidth, is given time
// to climb back, and fails the test if it does not.
async function settle(ctx, room, { subId, trackId, events, expect }) {
  if (SETTLE_MS <= 0) return;
  const started = Date.now();
  const firstEvent = events.length;
  let st = null;
  for (;;) {
    st = await readView(room, subId, trackId);
    const changes = events.filter((e) => e.kind === 'layer_changed');
    const last = changes.length ? Number(changes[changes.length - 1].at_unix_ms) : 0;
    const now = Date.now();
    const on = !!st && st.current_spatial_layer === st.target_spatial_layer && expect.ok(st.current_spatial_layer);
    if (on && now - last >= SETTLE_MS && now - started >= SETTLE_MS) {
      if (changes.length > 0 && events.indexOf(changes[changes.length - 1]) >= firstEvent) {
        log(`note: the subscription moved by itself before settling on layer ${st.current_spatial_layer}: ${fmtChanges(events.slice(firstEvent), started)}`);
      }
      return;
    }
    if (now - started > SETTLE_LIMIT_MS) {
      const moved = fmtChanges(events.slice(firstEvent), started);
      if (!on) {
        const { p, s } = await collectStats(ctx.pages.pub, ctx.pages.sub);
        throw new Error(`the subscription did not settle on ${expect.what} within ${SETTLE_LIMIT_MS / 1000} s ` +
          `(router: ${fmtView(st)}; LayerChanged since waiting: ${moved || 'none'}; now ${simulcastLine(p, s)})`);
      }
      log(`note: the subscription did not stay quiet for ${SETTLE_MS} ms within ${SETTLE_LIMIT_MS / 1000} s (router: ${fmtView(st)}; LayerChanged since waiting: ${moved}); switching anyway`);
      return;
    }
    await sleep(SETTLE_POLL_MS);
  }
}

function fmtChanges(evs, since) {
  return evs
    .filter((e) => e.kind === 'layer_changed')
    .map((e) => `${e.layer_changed.old_layer}->${e.layer_changed.new_layer} (${e.layer_changed.reason}) at +${Number(e.at_unix_ms) - since}ms`)
    .join(', ');
}

async function switchLayer(ctx, room, { subId, trackId, layer, width, timeoutMs, events }) {
  const { pub, sub } = ctx.pages;
  const firstEvent = events.length;
  const rid = RID_ORDER[layer];
  // The publisher's counters for the target layer: when its PLI arrives and
  // its keyframe is encoded tell where the time goes.
  const layerOf = (p) => ((p && p.outVideo && p.outVideo.layers) || []).find((l) => l.rid === rid) || {};
  const { p: p0, s: s0 } = await collectStats(pub, sub);
  const base = layerOf(p0);
  const already = widthMatches(s0 && s0.inVideo && s0.inVideo.frameWidth, width);
  log(`---- max_spatial_layer ${layer}: expecting frameWidth ≈ ${width} (now ${(s0 && s0.inVideo && s0.inVideo.size) || '-'}; ` +
    `layer ${rid}: ${base.size || '-'} pli=${base.pliCount || 0} keyframes=${base.keyFramesEncoded || 0})`);
  let pliMs = null;
  let keyMs = null;
  const started = Date.now();
  const resp = await room.call('SessionService', 'UpdateSubscription', {
    session_id: subId, track_id: trackId, max_spatial_layer: layer,
  });
  let view = fmtView(resp.subscription);
  log(`router view right after the call: ${view}`);
  const views = [`+0ms ${view}`];
  const deadline = started + timeoutMs;
  let lastView = Date.now();
  let s = null;
  for (;;) {
    checkDaemon(ctx);
    const polled = await collectStats(pub, sub);
    const p = polled.p;
    s = polled.s;
    const l = layerOf(p);
    if (pliMs === null && (l.pliCount || 0) > (base.pliCount || 0)) pliMs = Date.now() - started;
    if (keyMs === null && (l.keyFramesEncoded || 0) > (base.keyFramesEncoded || 0)) keyMs = Date.now() - started;
    const w = s && s.inVideo && s.inVideo.frameWidth;
    if (widthMatches(w, width)) break;
    if (Date.now() > deadline) {
      let now = '(unavailable)';
      try {
        now = fmtView(await readView(room, subId, trackId));
      } catch (e) {
        now = `(${e.message})`;
      }
      const seen = events.slice(firstEvent).filter((e) => e.kind === 'layer_changed').map((e) => {
        const c = e.layer_changed;
        return `${c.old_layer}->${c.new_layer} (${c.reason}) at +${Number(e.at_unix_ms) - started}ms`;
      });
      throw new Error(
        `max_spatial_layer ${layer}: the subscriber's frameWidth did not reach ≈${width} within ${timeoutMs / 1000} s ` +
        `(it is ${w || 'unset'}, ${s && s.inVideo && s.inVideo.size}).\n` +
        `  router view now: ${now}\n` +
        `  router views during the wait: ${views.join(' | ')}\n` +
        `  LayerChanged events since the call: ${seen.join(', ') || '(none)'}\n` +
        `  publisher: ${publisherLayers(p)}\n` +
        `  subscriber picture sizes shown (ms relative to the call): ${((s && s.videoSizes) || []).map((x) => `${x.width}x${x.height}@${x.at - started}`).join(', ') || '(none)'}`,
      );
    }
    if (Date.now() - lastView >= ROUTER_VIEW_EVERY_MS) {
      lastView = Date.now();
      try {
        view = fmtView(await readView(room, subId, trackId));
      } catch (e) {
        view = `(${e.message})`;
      }
      views.push(`+${Date.now() - started}ms ${view}`);
      log(`${simulcastLine(p, s)} router: ${view}`);
    }
    await sleep(SWITCH_POLL_MS);
  }
  const statsMs = Date.now() - started;
  const done = layerOf(diag.lastStats.publisher);
  // Finer figures: the first frame of the new size the page showed (its
  // video element's resize event, which may come a little after getStats
  // has the new size) and the router's LayerChanged event.
  await sleep(300);
  const sizes = await sub.evaluate(() => window.kaskade.stats()).then((x) => x.videoSizes).catch(() => null);
  const shown = (sizes || (s && s.videoSizes) || []).find((x) => x.at >= started && widthMatches(x.width, width));
  const changed = events.slice(firstEvent).find((e) => e.kind === 'layer_changed' && e.layer_changed.new_layer === layer);
  const result = {
    layer,
    size: s.inVideo.size,
    statsMs,
    shownMs: shown ? shown.at - started : null,
    routerMs: changed ? Number(changed.at_unix_ms) - started : null,
    reason: changed ? changed.layer_changed.reason : null,
    pliMs,
    keyMs,
    plis: (done.pliCount || 0) - (base.pliCount || 0),
    already,
  };
  if (already) log(`layer ${layer}: the subscriber already had this width before the call; no switch to measure`);
  log(`layer ${layer}: ${result.size} in getStats after ${statsMs} ms (publisher: PLI on ${rid} seen +${pliMs ?? '-'} ms, ` +
    `${result.plis} PLI(s) in all, keyframe encoded +${keyMs ?? '-'} ms; router LayerChanged +${result.routerMs ?? '?'} ms ${result.reason || ''}; ` +
    `first frame shown +${result.shownMs ?? '?'} ms)`);
  return result;
}

async function simulcastScenario(ctx) {
  const room = await startRoom(ctx);
  const events = watchRoom(ctx);
  const { tracks, captured } = await startPublisher(ctx, room, { simulcast: true });
  const video = tracks.find((t) => t.kind === 'TRACK_KIND_VIDEO');
  if (!video || !video.rids || video.rids.length !== 3) {
    throw new Error(`CreateSession for the simulcast publisher should list one video track with three rids, got ${JSON.stringify(tracks)}`);
  }
  const cam = captured.find((t) => t.kind === 'video') || {};
  if (cam.width !== 1280 || cam.height !== 720) {
    throw new Error(`the fake camera should capture 1280x720 for this test, it gives ${cam.width}x${cam.height}`);
  }
  const widths = [cam.width / 4, cam.width / 2, cam.width]; // the scaleResolutionDownBy of page.js
  const subSession = await startSubscriber(ctx, room, [video.track_id]);
  const media = await waitForMedia(ctx, { audio: false, line: simulcastLine });
  log(`video flowing after ${media.mediaSecs} s (${media.videoCodec})`);

  const results = [];
  const beforeSteps = events.length;
  let expect = { what: 'a layer above the lowest', ok: (l) => l > 0 };
  for (const step of SIMULCAST_STEPS) {
    checkDaemon(ctx);
    await settle(ctx, room, { subId: subSession.session_id, trackId: video.track_id, events, expect });
    expect = { what: `layer ${step.layer}`, ok: (l) => l === step.layer };
    results.push(await switchLayer(ctx, room, {
      subId: subSession.session_id,
      trackId: video.track_id,
      layer: step.layer,
      width: widths[step.layer],
      timeoutMs: step.timeoutMs,
      events,
    }));
  }

  const layerEvents = events.filter((e) => e.kind === 'layer_changed').map((e) => e.layer_changed);
  log(`LayerChanged events: ${layerEvents.map((c) => `${c.old_layer}->${c.new_layer} (${c.reason})`).join(', ') || '(none)'}`);
  // Not counting the first selection when the subscription started.
  const fromSteps = events.slice(beforeSteps).filter((e) => e.kind === 'layer_changed').map((e) => e.layer_changed);
  if (!fromSteps.some((c) => c.reason === 'preference')) {
    throw new Error(`no LayerChanged event with reason "preference" although UpdateSubscription changed the preference three times; ` +
      `saw ${JSON.stringify(fromSteps)} since the first call`);
  }
  return { media, results, layerEvents };
}

// ---------------------------------------------------------------- main
async function cleanup(ctx) {
  const steps = [
    async () => ctx.watch && ctx.watch.cancel(),
    async () => ctx.pages && Promise.all(Object.values(ctx.pages).map((p) => p.evaluate(() => window.kaskade.close()).catch(() => {}))),
    async () => ctx.context && (await Promise.race([ctx.context.close(), sleep(10_000)])),
    async () => ctx.rooms && ctx.rooms.close(),
    async () => ctx.sessions && ctx.sessions.close(),
    async () => stopDaemon(ctx.daemon),
    async () => ctx.pageServer && ctx.pageServer.close(),
    async () => rmSync(ctx.userDataDir, { recursive: true, force: true }),
  ];
  for (const step of steps) {
    try {
      await step();
    } catch (e) {
      log(`cleanup step failed: ${e.message}`);
    }
  }
}

async function main() {
  if (!SCENARIOS.includes(SCENARIO)) {
    console.error(`unknown --scenario ${SCENARIO}; known: ${SCENARIOS.join(', ')}`);
    process.exit(1);
  }
  const ctx = { userDataDir: mkdtempSync(path.join(os.tmpdir(), 'kaskade-e2e-chromium-')) };
  let finished = false;
  const abort = async (reason, code) => {
    if (finished) return;
    finished = true;
    dumpDiagnostics(reason);
    await Promise.race([stopDaemon(ctx.daemon), sleep(8_000)]);
    await Promise.race([cleanup(ctx), sleep(10_000)]);
    process.exit(code);
  };
  const watchdog = setTimeout(
    () => abort(`hard timeout: the whole run took more than ${TOTAL_TIMEOUT_MS / 1000} s`, 2),
    TOTAL_TIMEOUT_MS,
  );
  for (const sig of ['SIGINT', 'SIGTERM']) process.once(sig, () => abort(`interrupted by ${sig}`, 130));

  let code = 0;
  try {
    if (SELF_CHECK) {
      await selfCheck(ctx);
    } else if (SCENARIO === 'simulcast') {
      const r = await simulcastScenario(ctx);
      try {
        await rpc(ctx.rooms, 'RoomService', 'DeleteRoom', { room_id: ROOM_ID });
      } catch (e) {
        log(`note: ${e.message}`);
      }
      if (VERBOSE) {
        console.log(`---- daemon stderr tail ----\n${diag.daemonStderr.join('\n')}`);
      }
      const ms = (v) => (v === null || v === undefined ? '?' : `${v}`);
      const steps = r.results.map((x) =>
        x.already
          ? `layer ${x.layer} -> ${x.size} already before the call`
          : `layer ${x.layer} -> ${x.size} in ${x.statsMs} ms (first frame ${ms(x.shownMs)} ms, router switch ${ms(x.routerMs)} ms)`);
      console.log(`browser simulcast (settle ${SETTLE_MS} ms): ${steps.join('; ')}; ${r.layerEvents.length} LayerChanged event(s); ` +
        `video after ${r.media.mediaSecs}s; total ${since()}s`);
    } else {
      const r = await fullScenario(ctx);
      log(`selected pair: ${r.pair ? `${r.pair.local} -> ${r.pair.remote}` : 'unknown'}; codecs ${r.videoCodec}, ${r.audioCodec}`);
      try {
        await rpc(ctx.rooms, 'RoomService', 'DeleteRoom', { room_id: ROOM_ID });
      } catch (e) {
        log(`note: ${e.message}`);
      }
      if (VERBOSE) {
        console.log(`---- daemon stderr tail ----\n${diag.daemonStderr.join('\n')}`);
      }
      console.log(`browser e2e: framesDecoded=${r.frames} audioPackets=${r.audio} in ${since()}s (media flowing after ${r.mediaSecs}s)`);
    }
  } catch (e) {
    code = 1;
    if (!finished) dumpDiagnostics(e && e.stack ? e.stack : String(e));
  }
  // When the watchdog or a signal got there first, abort() cleans up and exits.
  if (finished) return;
  finished = true;
  clearTimeout(watchdog);
  await Promise.race([cleanup(ctx), sleep(15_000)]);
  if (code !== 0) console.error(`browser e2e: FAILED after ${since()}s`);
  process.exit(code);
}

main();
