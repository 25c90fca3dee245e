#!/usr/bin/env node
// Real-browser end-to-end test of kaskade: one headless Chromium, two pages
// (three in the cascade scenario). The publisher page sends its fake camera and
// microphone to the router, the subscriber page receives both through the
// router plus a data channel.
//
//   KASKADE_BIN=/path/to/kaskade node run.mjs     full scenario (starts the daemon itself)
//   KASKADE_BIN=... node run.mjs --scenario simulcast
//                                                 the publisher sends three simulcast layers;
//                                                 UpdateSubscription must move the subscriber
//                                                 to the lowest, highest and middle layer
//   KASKADE_BIN=... node run.mjs --scenario e2ee
//                                                 simulcast with every frame encrypted end to end
//                                                 (frame transforms, AES-GCM): the subscriber must
//                                                 decrypt and decode, and layer switches still work
//   KASKADE_BIN=... node run.mjs --scenario cascade
//                                                 two routers (fra, ams) linked over QUIC: the
//                                                 publisher on fra, the subscriber on ams must
//                                                 decode the video and receive the audio
//   KASKADE_BIN=... node run.mjs --scenario demo
//                                                 the demo app the daemon serves: two pages join
//                                                 one room, each decodes the other, a layer picked
//                                                 in one shows in its decoded width, a leaver's
//                                                 tile goes away
//   KASKADE_BIN=... node run.mjs --scenario demo-tls
//                                                 the demo app over https with API keys: two pages
//                                                 join with a room token and decode each other
//                                                 (demo-tls.mjs; needs the KASKADE_TEST_* env of
//                                                 router/tests/browser.rs)
//   KASKADE_BIN=... node run.mjs --scenario whip
//                                                 a page publishes with plain-fetch WHIP, another
//                                                 plays it with WHEP and decodes (whip.mjs)
//   KASKADE_BIN=... node run.mjs --scenario tcp
//                                                 ICE-TCP: run inside a network namespace that drops
//                                                 UDP (browser.rs sets one up; the scenario checks);
//                                                 both pages must connect to the router's passive TCP
//                                                 candidate, the subscriber decode the video
//   KASKADE_BIN=... node run.mjs --scenario example
//                                                 no browser: the example backend of
//                                                 docs/examples/node-backend relays a session's
//                                                 signalling over its WebSocket and pushes events
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
//   KASKADE_E2E_LINK_S     cascade: deadline of LinkRoom (default 15)
//   KASKADE_E2E_REMOTE_TRACKS_S  cascade: how long the remote tracks may take to show on
//                          the second router (default 15)
//   KASKADE_E2E_COMPARE=0  cascade: no second subscriber on the first router (by default one
//                          subscribes there too and both pages' frames are compared)
//   KASKADE_E2E_VERBOSE=1  print page console logs and daemon stderr even on success
//   KASKADE_LOG_LEVEL      the daemon's log filter (its default is "info"); all
//                          KASKADE_* variables reach the daemon (KASKADE_LOG_IPS
//                          defaults to true here: addresses are loopback only)
//
// Exit status: 0 on success, 1 on a test failure, 2 on the hard timeout.

import { execFile, spawn } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { chromium } from 'playwright-core';

import { whipScenario } from './whip.mjs';
import { gstWhipScenario } from './gst-whip.mjs';
import { demoTlsScenario } from './demo-tls.mjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const PROTO_DIR = path.resolve(HERE, '../../../protocol/proto');
const PROTO_FILES = ['kaskade/v1/room.proto', 'kaskade/v1/session.proto', 'kaskade/v1/cascade.proto'];
const CHROMIUM = process.env.KASKADE_CHROMIUM || '/usr/bin/chromium';
const SELF_CHECK = process.argv.includes('--self-check');
const SCENARIO = (() => {
  const i = process.argv.indexOf('--scenario');
  const eq = process.argv.find((a) => a.startsWith('--scenario='));
  return eq ? eq.slice('--scenario='.length) : i >= 0 ? process.argv[i + 1] : 'basic';
})();
const SCENARIOS = ['basic', 'simulcast', 'cascade', 'demo', 'demo-tls', 'example', 'e2ee', 'whip', 'gst-whip', 'tcp'];
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
  // label -> { stderr: tail of its stderr (and stray stdout) lines, exit }
  daemons: {},
  consoles: { pub: [], sub: [] }, // role -> page console lines
  lastStats: null,
  sdp: {}, // label -> SDP, every description exchanged
  events: null, // WatchEvents messages, when a scenario watches the room
  extra: [], // scenario-specific state gathered on failure
};
const ROLE_NAMES = { pub: 'publisher', sub: 'subscriber', subA: 'second subscriber (router A)', alice: 'demo page alice', bob: 'demo page bob' };
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
  for (const [label, d] of Object.entries(diag.daemons)) {
    if (d.exit) out.push(`${label} exited: ${d.exit}`);
  }
  out.push('');
  out.push('---- last getStats summary ----');
  out.push(diag.lastStats ? JSON.stringify(diag.lastStats, null, 2) : '(none taken)');
  for (const role of Object.keys(diag.consoles)) {
    out.push('');
    out.push(`---- ${ROLE_NAMES[role] || role} page console (${diag.consoles[role].length} lines) ----`);
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
  if (diag.extra.length) {
    out.push('');
    out.push('---- scenario state at the failure ----');
    out.push(...diag.extra);
  }
  for (const [label, d] of Object.entries(diag.daemons)) {
    out.push('');
    out.push(`---- ${label} stderr, last ${d.stderr.length} lines ----`);
    out.push(...(d.stderr.length ? d.stderr : ['(empty)']));
  }
  out.push('============================================================');
  console.error(out.join('\n'));
}

function printDaemonTails() {
  for (const [label, d] of Object.entries(diag.daemons)) {
    console.log(`---- ${label} stderr tail ----\n${d.stderr.join('\n')}`);
  }
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

function rpc(client, service, method, request, { quiet = false, timeoutMs = RPC_TIMEOUT_MS } = {}) {
  return new Promise((resolve, reject) => {
    const started = Date.now();
    client[method](request, { deadline: Date.now() + timeoutMs }, (err, resp) => {
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
// `label` names the daemon in the diagnostics; `extraArgs` follow the common ones.
function startDaemon(bin, { label = 'daemon', extraArgs = [] } = {}) {
  const args = [
    'serve',
    '--control-listen', '127.0.0.1:0',
    '--metrics-listen', '127.0.0.1:0',
    '--media-bind', '127.0.0.1',
    '--media-port-start', '0',
    '--workers', '2',
    '--http-listen', '127.0.0.1:0',
    ...extraArgs,
  ];
  const d = { stderr: [], exit: null };
  diag.daemons[label] = d;
  const env = { ...process.env };
  // Only loopback addresses in this test: let the daemon log them, it helps
  // when ICE fails. KASKADE_LOG_LEVEL (e.g. "info,kaskade_router=debug") passes through.
  if (!env.KASKADE_LOG_IPS) env.KASKADE_LOG_IPS = 'true';
  if (!env.NO_COLOR) env.NO_COLOR = '1'; // plain log lines for the diagnostics
  log(`starting ${label}: ${bin} ${args.join(' ')}`);
  // Its own process group, so a wrapper script and its children stop too.
  const child = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env, detached: true });
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => {
      d.exit = `code=${code} signal=${signal} at +${since()}s`;
      resolve({ code, signal });
    });
    child.once('error', (err) => {
      d.exit = `spawn error: ${err.message}`;
      resolve({ code: null, signal: null, error: err });
    });
  });
  readline.createInterface({ input: child.stderr }).on('line', (l) => pushTail(d.stderr, l));

  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`${label} did not print KASKADE_READY within ${READY_TIMEOUT_MS / 1000} s`)),
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
        pushTail(d.stderr, `(stdout) ${line}`);
      }
    });
    exited.then(({ code, signal, error }) => {
      clearTimeout(timer);
      reject(new Error(error
        ? `cannot start ${label} (${bin}): ${error.message}`
        : `${label} exited before it was ready (code=${code} signal=${signal})`));
    });
  });
  // A rejection after success must not become an unhandled rejection.
  ready.catch(() => {});
  return { label, child, ready, exited };
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
    log(`${d.label} exited ${Date.now() - started} ms after SIGTERM (code=${res.code} signal=${res.signal})`);
  } else {
    log(`WARNING: ${d.label} still running 5 s after SIGTERM; sending SIGKILL`);
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
    '/e2ee-worker.js': ['e2ee-worker.js', 'text/javascript; charset=utf-8'],
    '/whip.html': ['whip.html', 'text/html; charset=utf-8'],
    '/whip-page.js': ['whip-page.js', 'text/javascript; charset=utf-8'],
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
async function launchBrowser(userDataDir, extraArgs = []) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`Chromium not found at ${CHROMIUM}: run \`bash .ci/run\` or \`apt-get install chromium\` (or set KASKADE_CHROMIUM)`);
  }
  log(`launching ${CHROMIUM}`);
  return chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_ARGS, ...extraArgs],
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

// `subKey` names the subscriber in diag.lastStats (scenarios with several).
async function collectStats(pub, sub, subKey = 'subscriber') {
  const [p, s] = await Promise.all([
    pub.evaluate(() => window.kaskade.stats()).catch((e) => ({ error: String(e) })),
    sub.evaluate(() => window.kaskade.stats()).catch((e) => ({ error: String(e) })),
  ]);
  diag.lastStats = { ...(diag.lastStats || {}), at: `+${since()}s`, publisher: p, [subKey]: s };
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
// `daemonArgs` follow the daemon's common arguments.
async function startRoom(ctx, { daemonArgs = [] } = {}) {
  const bin = process.env.KASKADE_BIN;
  if (!bin) throw new Error('KASKADE_BIN is not set (path to the kaskade binary)');
  if (!existsSync(bin)) throw new Error(`KASKADE_BIN=${bin} does not exist (build it with cargo build -p kaskade-router)`);
  const { v1 } = loadApi();

  ctx.daemon = startDaemon(bin, { extraArgs: daemonArgs });
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  ctx.ready = ready;
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
async function startPublisher(ctx, { pub, call }, { simulcast = false, audio = false, e2eeKey = null } = {}) {
  const pubOffer = await pub.evaluate((opts) => window.kaskade.publish(opts), { simulcast, audio, e2eeKey });
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
// Returns the session and when Subscribe was called (Date.now()).
// `label` names the subscriber in the log and the SDP dump, `frameLog` asks
// the page to hash the frames it shows (page.js watchFrames).
async function startSubscriber(ctx, { sub, call }, trackIds,
  { participant = 'sub', label = 'subscriber', frameLog = false, bootstrap = 'datachannel', e2eeKey = null } = {}) {
  const subOffer = await sub.evaluate((opts) => window.kaskade.prepareSubscriber(opts), { frameLog, bootstrap, e2eeKey });
  describeOffer(`${label} offer`, subOffer.sdp, { all: false });
  const subSession = await call('SessionService', 'CreateSession', {
    room_id: ROOM_ID, participant_id: participant, sdp_offer: subOffer.sdp, metadata: '',
  });
  describeOffer(`router answer to ${label}`, subSession.sdp_answer);
  await sub.evaluate((sdp) => window.kaskade.acceptAnswer(sdp), subSession.sdp_answer);
  log(`${label} session ${subSession.session_id}`);

  const subscribeAt = Date.now();
  const subscribed = await call('SessionService', 'Subscribe', {
    session_id: subSession.session_id, track_ids: trackIds,
  });
  log(`subscriptions: ${(subscribed.subscriptions || []).map((s) => `${s.track_id}→mid ${s.mid}`).join(', ') || '(none)'}`);
  describeOffer(`router offer to ${label}`, subscribed.sdp_offer);
  const subAnswer = await sub.evaluate((sdp) => window.kaskade.answerOffer(sdp), subscribed.sdp_offer);
  diag.sdp[`${label} answer`] = subAnswer;
  await call('SessionService', 'SetAnswer', { session_id: subSession.session_id, sdp_answer: subAnswer });
  return { ...subSession, subscribeAt };
}

// Media must flow: video frames decoded and (unless audio is false) audio
// packets received, both above a floor and growing over two consecutive
// polls (so not a single burst); and (unless dataChannel is false) the data
// channel must have opened.
// `sub`/`subKey`: another subscriber page than ctx.pages.sub.
async function waitForMedia(ctx, {
  audio: needAudio = true, dataChannel = true, line = progressLine, sub = ctx.pages.sub, subKey,
} = {}) {
  const { pub } = ctx.pages;
  const mediaStart = Date.now();
  const deadline = mediaStart + MEDIA_TIMEOUT_MS;
  let prev = null;
  let growing = 0; // consecutive polls in which the counters grew
  let lastProgress = 0;
  for (;;) {
    checkDaemon(ctx);
    const { p, s } = await collectStats(pub, sub, subKey);
    const frames = (s && s.inVideo && s.inVideo.framesDecoded) || 0;
    const audio = (s && s.inAudio && s.inAudio.packetsReceived) || 0;
    const audioOk = !needAudio || audio > 10;
    const dcOpen = !dataChannel || !!(s && s.dataChannelOpened);
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
        srtpCipher: s.transport && s.transport.srtpCipher,
        dtlsCipher: s.transport && s.transport.dtlsCipher,
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
  for (const d of ctx.daemons || []) {
    if (d.child.exitCode !== null || d.child.signalCode !== null) {
      throw new Error(`${d.label} died during the test (${diag.daemons[d.label].exit})`);
    }
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

// ---------------------------------------------------------------- ICE-TCP
// Chromium whose UDP is dropped (browser.rs runs this scenario in a network
// namespace with only `lo` and an nft rule dropping UDP) must connect to the
// router's passive TCP candidate (media.tcp_listen), which the router offers
// beside its UDP one, and the subscriber decode the video, receive the audio
// and open its data channel over it.

// Sends a datagram to a socket of our own on 127.0.0.1: if it arrives, UDP
// is not blocked and this scenario would test nothing.
async function udpReachesLoopback() {
  const sock = dgram.createSocket('udp4');
  try {
    await new Promise((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, '127.0.0.1', resolve);
    });
    const got = new Promise((resolve) => sock.once('message', () => resolve(true)));
    const { port } = sock.address();
    for (let i = 0; i < 3; i += 1) sock.send('kaskade-e2e-udp-probe', port, '127.0.0.1');
    return await Promise.race([got, sleep(500).then(() => false)]);
  } finally {
    sock.close();
  }
}

// The selected pair of a page's getStats summary, which must be TCP on both ends.
function requireTcpPair(label, st) {
  const pair = st && st.pair;
  if (!pair || pair.localProtocol !== 'tcp' || pair.remoteProtocol !== 'tcp') {
    throw new Error(`the ${label}'s selected candidate pair should be TCP on both ends: ${JSON.stringify(pair)}`);
  }
  return `${pair.local} (${pair.localTcpType || '?'}) -> ${pair.remote}`;
}

// One value of a Prometheus text exposition (`name{labels}`), or null.
function metricValue(text, series) {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : null;
}

async function tcpScenario(ctx) {
  if (await udpReachesLoopback()) {
    throw new Error('UDP on 127.0.0.1 is not blocked: the tcp scenario must run in a network namespace ' +
      'that drops UDP (cargo test -p kaskade-router --test browser sets one up)');
  }
  log('UDP on 127.0.0.1 is dropped, as it should be');
  const room = await startRoom(ctx, { daemonArgs: ['--media-tcp-listen', '127.0.0.1:0'] });
  if (!ctx.ready.tcp) throw new Error(`the ready line names no TCP listener: ${JSON.stringify(ctx.ready)}`);
  log(`router ICE-TCP listener ${ctx.ready.tcp}`);
  const { session, tracks } = await startPublisher(ctx, room);
  const cands = candidatesOf(session.sdp_answer);
  if (!cands.some((c) => / tcp /i.test(c) && /tcptype passive/.test(c)) || !cands.some((c) => / udp /i.test(c))) {
    throw new Error(`the router's answer should offer a passive TCP and a UDP candidate: ${JSON.stringify(cands)}`);
  }
  await startSubscriber(ctx, room, tracks.map((t) => t.track_id));
  const media = await waitForMedia(ctx);
  const { p, s } = await collectStats(ctx.pages.pub, ctx.pages.sub);
  const pubPair = requireTcpPair('publisher', p);
  const subPair = requireTcpPair('subscriber', s);
  const metrics = await (await fetch(`http://${ctx.ready.metrics}/metrics`)).text();
  const active = metricValue(metrics, 'kaskade_tcp_connections{state="active"}');
  if (!(active >= 2)) {
    throw new Error(`kaskade_tcp_connections{state="active"} should count both pages' connections, is ${active}`);
  }
  return { media, pubPair, subPair, active };
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

// With `e2eeKey` (16 bytes), the e2ee scenario: the publisher also sends its
// microphone, every frame of both is encrypted end to end by a frame
// transform (e2ee-worker.js), and the subscriber decrypts them; the router
// forwards what it cannot read, so decoding, audio and the layer switches
// (which need keyframe requests) all show that it relies on nothing inside
// the encrypted part.
async function simulcastScenario(ctx, { e2eeKey = null } = {}) {
  const room = await startRoom(ctx);
  const events = watchRoom(ctx);
  const { tracks, captured } = await startPublisher(ctx, room, { simulcast: true, audio: !!e2eeKey, e2eeKey });
  const video = tracks.find((t) => t.kind === 'TRACK_KIND_VIDEO');
  if (!video || !video.rids || video.rids.length !== 3) {
    throw new Error(`CreateSession for the simulcast publisher should list one video track with three rids, got ${JSON.stringify(tracks)}`);
  }
  const cam = captured.find((t) => t.kind === 'video') || {};
  if (cam.width !== 1280 || cam.height !== 720) {
    throw new Error(`the fake camera should capture 1280x720 for this test, it gives ${cam.width}x${cam.height}`);
  }
  const widths = [cam.width / 4, cam.width / 2, cam.width]; // the scaleResolutionDownBy of page.js
  // This subscriber bootstraps with a receive-only transceiver instead of a
  // data channel (docs/api.md): the router must serve it the same way.
  const audioTrack = e2eeKey ? tracks.find((t) => t.kind === 'TRACK_KIND_AUDIO') : null;
  if (e2eeKey && !audioTrack) throw new Error(`the e2ee publisher should publish audio too, got ${JSON.stringify(tracks)}`);
  const subscribeTo = [video.track_id, ...(audioTrack ? [audioTrack.track_id] : [])];
  const subSession = await startSubscriber(ctx, room, subscribeTo, { bootstrap: 'recvonly', e2eeKey });
  const media = await waitForMedia(ctx, { audio: !!e2eeKey, dataChannel: false, line: simulcastLine });
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
  let e2ee = null;
  if (e2eeKey) {
    const { p, s } = await collectStats(ctx.pages.pub, ctx.pages.sub);
    e2ee = { pub: p.e2ee, sub: s.e2ee };
    log(`e2ee frames: publisher encrypted ${p.e2ee && p.e2ee.encrypted}; subscriber decrypted ${s.e2ee && s.e2ee.decrypted}, ` +
      `failed ${s.e2ee && s.e2ee.failed}, arrived unencrypted ${s.e2ee && s.e2ee.passedClear}`);
    if (!p.e2ee || !s.e2ee) throw new Error('the pages report no e2ee counts');
    if (s.e2ee.decrypted < 100) throw new Error(`the subscriber decrypted only ${s.e2ee.decrypted} frames`);
    if (s.e2ee.passedClear > 0) throw new Error(`${s.e2ee.passedClear} frames reached the subscriber unencrypted`);
    // A frame whose tag does not verify was changed on the way: the router
    // must never touch the encrypted part. (None expected; a handful could
    // only be frames cut short by loss, which loopback does not have.)
    if (s.e2ee.failed > 0) throw new Error(`${s.e2ee.failed} frames failed to decrypt (changed on the way?)`);
    if (!(s.inVideo && s.inVideo.framesDecoded > 100)) throw new Error('the subscriber decoded too few frames');
  }
  return { media, results, layerEvents, e2ee };
}

// ---------------------------------------------------------------- cascade
// Two routers on loopback, A (node fra, region eu-de-fra) and B (node ams,
// region eu-nl-ams), linked over QUIC with mutual TLS (certificates from
// `kaskade cert dev-cluster`). Page A publishes camera and microphone on A;
// the room is linked to B; page B subscribes on B to the remote tracks and
// must decode the video and receive the audio. Then (unless
// KASKADE_E2E_COMPARE=0) page C subscribes on A itself, and the frames both
// subscribers show are matched by their pixels to compare the two paths.

const LINK_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_LINK_S || 15);
const REMOTE_TRACKS_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_REMOTE_TRACKS_S || 15);
const COMPARE = process.env.KASKADE_E2E_COMPARE !== '0';
const COMPARE_MS = 4000; // how long both subscribers' frames are logged
const CASCADE_NODES = {
  A: { id: 'fra', region: 'eu-de-fra' },
  B: { id: 'ams', region: 'eu-nl-ams' },
};

// A UDP port that was free a moment ago (the QUIC listeners need theirs up
// front: each router is told its peer's address).
function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

function runTool(bin, args, timeoutMs = 20_000) {
  log(`running ${bin} ${args.join(' ')}`);
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${path.basename(bin)} ${args.join(' ')} failed (${err.code ?? err.signal}): ${String(stderr).trim() || err.message}`));
      } else {
        resolve({ stdout: String(stdout), stderr: String(stderr) });
      }
    });
  });
}

function requireBin() {
  const bin = process.env.KASKADE_BIN;
  if (!bin) throw new Error('KASKADE_BIN is not set (path to the kaskade binary)');
  if (!existsSync(bin)) throw new Error(`KASKADE_BIN=${bin} does not exist (build it with cargo build -p kaskade-router)`);
  return bin;
}

// gRPC clients of one router and a `call(service, method, request, opts)`
// that logs with the router's name.
function routerApi(ctx, v1, name, ready) {
  const addr = ready.control;
  const clients = {
    RoomService: new v1.RoomService(addr, grpc.credentials.createInsecure()),
    SessionService: new v1.SessionService(addr, grpc.credentials.createInsecure()),
    CascadeService: new v1.CascadeService(addr, grpc.credentials.createInsecure()),
  };
  (ctx.clients || (ctx.clients = [])).push(...Object.values(clients));
  const call = (svc, method, req, opts) => rpc(clients[svc], `${name} ${svc}`, method, req, opts);
  return { clients, call };
}

const fmtRouters = (refs) => (refs || []).map((r) => `${r.node_id}(${r.region})`).join(', ') || '(none)';
const fmtTracks = (tracks) =>
  (tracks || []).map((t) => `${t.track_id}(${t.kind}${t.origin_node_id ? ` from ${t.origin_node_id}` : ''})`).join(', ') || '(none)';
function fmtLink(l) {
  if (!l) return '(none)';
  return `${l.peer && l.peer.node_id} up=${l.up} rooms=[${(l.rooms || []).join(',')}] rtt=${l.rtt_us}us ` +
    `sent=${l.datagrams_sent}dg/${l.bytes_sent}B received=${l.datagrams_received}dg/${l.bytes_received}B ` +
    `dropped=${l.datagrams_dropped} nacked=${l.nacked} retransmitted=${l.retransmitted} lost=${l.lost} ` +
    `tracks sent=${l.tracks_sent} received=${l.tracks_received} reconnects=${l.reconnects}`;
}

// Polls GetRoom on B until it lists a remote video and audio track from A.
async function waitForRemoteTracks(ctx, callB, origin) {
  const deadline = Date.now() + REMOTE_TRACKS_TIMEOUT_MS;
  const started = Date.now();
  let room = null;
  for (;;) {
    checkDaemon(ctx);
    room = (await callB('RoomService', 'GetRoom', { room_id: ROOM_ID }, { quiet: true })).room;
    const remote = ((room && room.tracks) || []).filter((t) => t.origin_node_id === origin);
    const kinds = remote.map((t) => t.kind);
    if (kinds.includes('TRACK_KIND_VIDEO') && kinds.includes('TRACK_KIND_AUDIO')) {
      log(`B lists the remote tracks after ${Date.now() - started} ms: ${fmtTracks(remote)}`);
      return { remote, room };
    }
    if (Date.now() > deadline) {
      throw new Error(`GetRoom on B did not list a remote video and audio track from ${origin} within ` +
        `${REMOTE_TRACKS_TIMEOUT_MS / 1000} s; it lists tracks ${fmtTracks(room && room.tracks)}, ` +
        `reached ${fmtRouters(room && room.reached)}, linked ${fmtRouters(room && room.linked)}`);
    }
    await sleep(100);
  }
}

const median = (xs) => {
  if (!xs.length) return null;
  const v = xs.slice().sort((a, b) => a - b);
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

// Frames decoded by both subscribers, matched by their luma hash (hashes
// seen more than once on either side are left out): B's times minus A's,
// when the page got the frame and (if Chromium tells) when its last packet
// arrived.
function compareFrames(logA, logB) {
  const once = (log) => {
    const count = new Map();
    for (const f of log) count.set(f.hash, (count.get(f.hash) || 0) + 1);
    return new Map(log.filter((f) => count.get(f.hash) === 1).map((f) => [f.hash, f]));
  };
  const a = once(logA);
  const b = once(logB);
  const got = [];
  const received = [];
  for (const [hash, fb] of b) {
    const fa = a.get(hash);
    if (!fa) continue;
    got.push(fb.got - fa.got);
    if (fa.received !== null && fb.received !== null) received.push(fb.received - fa.received);
  }
  const r1 = (x) => (x === null ? null : Math.round(x * 10) / 10);
  return {
    matched: got.length,
    framesA: logA.length,
    framesB: logB.length,
    gotMedian: r1(median(got)),
    gotMin: got.length ? r1(Math.min(...got)) : null,
    gotMax: got.length ? r1(Math.max(...got)) : null,
    receivedMedian: r1(median(received)),
  };
}

async function cascadeScenario(ctx) {
  const bin = requireBin();
  const { v1 } = loadApi();
  if (!v1.CascadeService) throw new Error('kaskade.v1.CascadeService not found in the protos');

  // Certificates and the two routers.
  ctx.certDir = mkdtempSync(path.join(os.tmpdir(), 'kaskade-e2e-certs-'));
  const { A: nodeA, B: nodeB } = CASCADE_NODES;
  await runTool(bin, ['cert', 'dev-cluster', '--out', ctx.certDir,
    '--node', `${nodeA.id}:${nodeA.region}`, '--node', `${nodeB.id}:${nodeB.region}`]);
  const portA = await freeUdpPort();
  let portB = await freeUdpPort();
  while (portB === portA) portB = await freeUdpPort();
  const nodeArgs = (node, port, peer, peerPort) => [
    '--node-id', node.id,
    '--region', node.region,
    '--cascade-listen', `127.0.0.1:${port}`,
    '--cascade-ca', path.join(ctx.certDir, 'ca.pem'),
    '--cascade-cert', path.join(ctx.certDir, `${node.id}.pem`),
    '--cascade-key', path.join(ctx.certDir, `${node.id}.key`),
    '--peer', `${peer.id}=127.0.0.1:${peerPort}`,
  ];
  const daemonA = startDaemon(bin, { label: `router A (${nodeA.id})`, extraArgs: nodeArgs(nodeA, portA, nodeB, portB) });
  const daemonB = startDaemon(bin, { label: `router B (${nodeB.id})`, extraArgs: nodeArgs(nodeB, portB, nodeA, portA) });
  ctx.daemons = [daemonA, daemonB];
  const [readyA, readyB] = await Promise.all([daemonA.ready, daemonB.ready]);
  for (const [name, ready, port] of [['A', readyA, portA], ['B', readyB, portB]]) {
    log(`router ${name} ready: control=${ready.control} media=${ready.media.join(',')} cascade=${ready.cascade}`);
    if (ready.cascade !== `127.0.0.1:${port}`) {
      throw new Error(`router ${name}'s KASKADE_READY line should say "cascade":"127.0.0.1:${port}", it says ${JSON.stringify(ready.cascade)}`);
    }
  }
  const { call: callA } = routerApi(ctx, v1, 'A', readyA);
  const { call: callB } = routerApi(ctx, v1, 'B', readyB);
  // On a failure: what both routers say about the room and the link.
  ctx.failureInfo = async () => {
    for (const [name, call] of [['A', callA], ['B', callB]]) {
      try {
        const r = (await call('RoomService', 'GetRoom', { room_id: ROOM_ID }, { quiet: true, timeoutMs: 3000 })).room;
        diag.extra.push(`router ${name} GetRoom: tracks ${fmtTracks(r.tracks)}; sessions ` +
          `${(r.sessions || []).map((x) => `${x.participant_id}(${x.session_id}, connected=${x.connected})`).join(', ') || '(none)'}; ` +
          `reached ${fmtRouters(r.reached)}; linked ${fmtRouters(r.linked)}`);
      } catch (e) {
        diag.extra.push(`router ${name} GetRoom: ${e.message}`);
      }
      try {
        const l = await call('CascadeService', 'ListLinks', {}, { quiet: true, timeoutMs: 3000 });
        diag.extra.push(`router ${name} ListLinks: ${(l.links || []).map(fmtLink).join(' | ') || '(no links)'}`);
      } catch (e) {
        diag.extra.push(`router ${name} ListLinks: ${e.message}`);
      }
    }
  };

  // The browser: the publisher, the subscriber on B and (to compare) one on A.
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.context = await launchBrowser(ctx.userDataDir);
  const pub = await openPage(ctx.context, 'pub', pageSrv.url, ctx.context.pages()[0]);
  const sub = await openPage(ctx.context, 'sub', pageSrv.url);
  ctx.pages = { pub, sub };
  if (COMPARE) {
    diag.consoles.subA = [];
    ctx.pages.subA = await openPage(ctx.context, 'subA', pageSrv.url);
  }
  log(`pages open at ${pageSrv.url}`);

  // The room on A, linked to B.
  await callA('RoomService', 'CreateRoom', { room_id: ROOM_ID, max_sessions: 0, allowed_regions: ['eu-'] });
  const linked = await callA('CascadeService', 'LinkRoom', { room_id: ROOM_ID, peer_node_id: nodeB.id }, { timeoutMs: LINK_TIMEOUT_MS });
  log(`A linked the room to ${fmtRouters([linked.peer])}`);
  if (!linked.peer || linked.peer.node_id !== nodeB.id || linked.peer.region !== nodeB.region) {
    throw new Error(`LinkRoom on A should answer with peer ${nodeB.id}(${nodeB.region}), got ${JSON.stringify(linked.peer)}`);
  }

  // Page A publishes on A; B must see its tracks as remote tracks.
  const { tracks } = await startPublisher(ctx, { pub, call: callA });
  const kinds = tracks.map((t) => t.kind);
  if (!kinds.includes('TRACK_KIND_VIDEO') || !kinds.includes('TRACK_KIND_AUDIO')) {
    throw new Error(`CreateSession for the publisher on A should list one audio and one video track, got ${JSON.stringify(tracks)}`);
  }
  const { remote } = await waitForRemoteTracks(ctx, callB, nodeA.id);

  // Page B subscribes on B to the remote tracks.
  const subB = await startSubscriber(ctx, { sub, call: callB }, remote.map((t) => t.track_id),
    { participant: 'sub-b', label: 'subscriber on B', frameLog: true });
  const media = await waitForMedia(ctx);
  const framesB = await sub.evaluate(() => window.kaskade.frames(Infinity));
  const firstFrameB = framesB.firstFrameAt === null ? null : framesB.firstFrameAt - subB.subscribeAt;
  log(`B decodes ${media.videoCodec} and receives ${media.audioCodec}; first frame decoded ${firstFrameB ?? '?'} ms after Subscribe on B`);

  // The routers' view: B reached by the room's media from A, the link up and carrying datagrams.
  const roomB = (await callB('RoomService', 'GetRoom', { room_id: ROOM_ID })).room;
  log(`B: reached ${fmtRouters(roomB.reached)}; linked ${fmtRouters(roomB.linked)}`);
  if (!(roomB.reached || []).some((r) => r.node_id === nodeA.id)) {
    throw new Error(`GetRoom on B should list ${nodeA.id} in reached, it lists ${fmtRouters(roomB.reached)}`);
  }
  const linksA = (await callA('CascadeService', 'ListLinks', {})).links || [];
  const linkA = linksA.find((l) => l.peer && l.peer.node_id === nodeB.id);
  log(`A's link to B: ${fmtLink(linkA)}`);
  if (!linkA || !linkA.up || !(Number(linkA.datagrams_sent) > 0)) {
    throw new Error(`ListLinks on A should show the link to ${nodeB.id} up with datagrams_sent > 0, it shows ${linksA.map(fmtLink).join(' | ') || '(no links)'}`);
  }

  // Optional: a subscriber on A itself; the same frames on both, B minus A.
  let compare = null;
  let firstFrameA = null;
  if (COMPARE) {
    const subA = await startSubscriber(ctx, { sub: ctx.pages.subA, call: callA }, tracks.map((t) => t.track_id),
      { participant: 'sub-a', label: 'subscriber on A', frameLog: true });
    await waitForMedia(ctx, { sub: ctx.pages.subA, subKey: 'subscriber on A' });
    const fa = await ctx.pages.subA.evaluate(() => window.kaskade.frames(Infinity));
    firstFrameA = fa.firstFrameAt === null ? null : fa.firstFrameAt - subA.subscribeAt;
    log(`subscriber on A: first frame decoded ${firstFrameA ?? '?'} ms after Subscribe on A; logging frames for ${COMPARE_MS / 1000} s`);
    const from = Date.now() + 500; // after A's first keyframe both decode the same bitstream
    await sleep(COMPARE_MS);
    checkDaemon(ctx);
    const [logA, logB] = await Promise.all([
      ctx.pages.subA.evaluate((t) => window.kaskade.frames(t).log, from),
      sub.evaluate((t) => window.kaskade.frames(t).log, from),
    ]);
    compare = compareFrames(logA, logB);
    log(`frames matched by their pixels: ${compare.matched} (of ${compare.framesA} on A, ${compare.framesB} on B); ` +
      `B − A decoded frame in the page: median ${compare.gotMedian ?? '?'} ms (min ${compare.gotMin ?? '?'}, max ${compare.gotMax ?? '?'}); ` +
      `last packet received: median ${compare.receivedMedian ?? '(not reported)'} ms`);
  }

  // The link still up, and counting.
  const linksAfter = (await callA('CascadeService', 'ListLinks', {})).links || [];
  const linkAfter = linksAfter.find((l) => l.peer && l.peer.node_id === nodeB.id);
  const linksB = (await callB('CascadeService', 'ListLinks', {})).links || [];
  log(`A's link to B now: ${fmtLink(linkAfter)}`);
  log(`B's link to A now: ${fmtLink(linksB.find((l) => l.peer && l.peer.node_id === nodeA.id))}`);
  return { media, firstFrameB, firstFrameA, compare, link: linkAfter || linkA };
}

// ---------------------------------------------------------------- demo app
// The demo app served by the daemon itself (http.listen): two pages open
// /?room=NAME&name=..., which joins at once through the demo signalling
// and kaskade.js. Each must decode the other's camera; bob picks "low" for
// alice's tile and its decoded width must drop to the lowest simulcast
// layer (a quarter of the capture); a speaker must be highlighted (the
// fake microphone's beeps, through the audio-level extension); bob leaves
// and alice's tile for him must go.

const DEMO_TOP_S = Number(process.env.KASKADE_E2E_TOP_LAYER_S || 45);
const DEMO_SWITCH_S = Number(process.env.KASKADE_E2E_SWITCH_S || 20);

async function demoTiles(page) {
  return page.evaluate(() => (window.kaskadeDemo ? window.kaskadeDemo.view.tiles : []));
}

async function demoScenario(ctx) {
  const bin = requireBin();
  ctx.daemon = startDaemon(bin);
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  if (typeof ready.http !== 'string') {
    throw new Error(`the KASKADE_READY line should name the HTTP listener ("http"), it is ${JSON.stringify(ready)}`);
  }
  log(`daemon ready: control=${ready.control} http=${ready.http}`);
  ctx.context = await launchBrowser(ctx.userDataDir);
  diag.consoles.alice = [];
  diag.consoles.bob = [];
  const base = `http://${ready.http}/?room=${ROOM_ID}`;
  const open = async (name, existing) => {
    const page = existing || (await ctx.context.newPage());
    page.on('console', (m) => {
      const line = `[${since()}s] ${m.type()}: ${m.text()}`;
      pushTail(diag.consoles[name], line, 500);
      if (VERBOSE) console.log(`  (${name}) ${line}`);
    });
    page.on('pageerror', (e) => pushTail(diag.consoles[name], `[${since()}s] pageerror: ${e.message}`, 500));
    await page.goto(`${base}&name=${name}`, { waitUntil: 'load', timeout: 15_000 });
    return page;
  };
  const alice = await open('alice', ctx.context.pages()[0]);
  ctx.pages = { alice };
  // Bob joins late: he must find alice's tracks in the room; she must be told of his.
  await sleep(1500);
  const bob = await open('bob');
  ctx.pages.bob = bob;
  const status = async (p) => p.evaluate(() => document.getElementById('status').textContent);
  ctx.failureInfo = async () => {
    for (const [n, p] of Object.entries(ctx.pages)) {
      diag.extra.push(`${n}: status "${await status(p).catch(() => '?')}", tiles ${JSON.stringify(await demoTiles(p).catch(() => null))}`);
    }
  };

  // Both decode each other.
  const mediaStart = Date.now();
  const decodes = (tiles) => tiles.find((t) => t.width > 0 && t.framesDecoded > 10);
  let seen = {};
  for (;;) {
    checkDaemon(ctx);
    const [a, b] = await Promise.all([demoTiles(alice), demoTiles(bob)]);
    const ta = decodes(a);
    const tb = decodes(b);
    if (ta && tb && ta.participantId === 'bob' && tb.participantId === 'alice' && seen.a && seen.b &&
        ta.framesDecoded > seen.a && tb.framesDecoded > seen.b) {
      seen = { a: ta, b: tb };
      break;
    }
    seen = { a: ta && ta.framesDecoded, b: tb && tb.framesDecoded };
    if (Date.now() - mediaStart > MEDIA_TIMEOUT_MS) {
      throw new Error(`the demo pages did not decode each other within ${MEDIA_TIMEOUT_MS / 1000} s: alice's tiles ${JSON.stringify(a)}, bob's ${JSON.stringify(b)}; ` +
        `status alice "${await status(alice)}", bob "${await status(bob)}"`);
    }
    await sleep(POLL_MS);
  }
  const mediaSecs = ((Date.now() - mediaStart) / 1000).toFixed(1);
  log(`both pages decode: alice sees bob ${seen.a.width}x${seen.a.height}, bob sees alice ${seen.b.width}x${seen.b.height}`);

  // Chromium's fake microphone beeps: its audio-level header extension must
  // make the router announce speakers, which the page highlights.
  const speakStart = Date.now();
  let speaking = [];
  while (speaking.length === 0) {
    if (Date.now() - speakStart > 15_000) {
      throw new Error('no tile on bob\'s page was highlighted as speaking within 15 s (active_speakers_changed never named anyone)');
    }
    await sleep(200);
    speaking = await bob.evaluate(() => [...document.querySelectorAll('.tile.speaking')].map((t) => t.dataset.key));
  }
  log(`bob's page highlights ${speaking.length} speaking tile(s) after ${Date.now() - speakStart} ms`);

  // The lowest layer is a quarter of alice's capture; wait until bob gets more than that.
  const capture = await alice.evaluate(() => {
    const v = window.kaskadeDemo.tiles.get('local').video.srcObject;
    return v ? v.getVideoTracks()[0].getSettings() : null;
  });
  const lowest = Math.round(capture.width / 4);
  log(`alice captures ${capture.width}x${capture.height}: the lowest layer is ${lowest} wide`);
  const aliceTile = async () => (await demoTiles(bob)).find((t) => t.participantId === 'alice');
  const topDeadline = Date.now() + DEMO_TOP_S * 1000;
  let before = await aliceTile();
  while (!(before && before.width > lowest * 1.5)) {
    if (Date.now() > topDeadline) {
      throw new Error(`bob's tile of alice stayed at ${before && before.width}px for ${DEMO_TOP_S} s; a layer above ${lowest}px never came`);
    }
    await sleep(POLL_MS);
    before = await aliceTile();
  }
  log(`bob receives alice at ${before.width}x${before.height} (layer ${before.layer}); picking "low"`);
  const started = Date.now();
  await bob.selectOption(`section.tile[data-key="${before.sessionId}"] select.layer`, 'low');
  let after = before;
  while (!widthMatches(after && after.width, lowest)) {
    if (Date.now() - started > DEMO_SWITCH_S * 1000) {
      throw new Error(`after picking "low", bob's tile of alice is ${after && after.width}px wide, not ≈${lowest}, within ${DEMO_SWITCH_S} s`);
    }
    await sleep(100);
    after = await aliceTile();
  }
  const switchMs = Date.now() - started;
  // The router's layer comes with layer_changed over the demo's event stream.
  const layerDeadline = Date.now() + 5000;
  while (after.layer !== 0 && Date.now() < layerDeadline) {
    await sleep(200);
    after = await aliceTile();
  }
  if (after.layer !== 0) throw new Error(`bob's tile of alice shows router layer ${after.layer}, expected 0 after picking "low"`);

  // Bob leaves: alice's tile of him goes.
  const leftAt = Date.now();
  await bob.click('#leave');
  for (;;) {
    const a = await demoTiles(alice);
    if (!a.some((t) => t.participantId === 'bob')) break;
    if (Date.now() - leftAt > 15_000) throw new Error(`alice still shows bob 15 s after he left: ${JSON.stringify(a)}`);
    await sleep(200);
  }
  return {
    aliceSees: `${seen.a.width}x${seen.a.height}`,
    bobSees: `${seen.b.width}x${seen.b.height}`,
    mediaSecs,
    before: before.width,
    after: after.width,
    layer: after.layer,
    switchMs,
    leftMs: Date.now() - leftAt,
  };
}

// ---------------------------------------------------------------- example backend
// docs/examples/node-backend, run as an integrator would: its page and
// kaskade.js are served; over its WebSocket a client gets the room, creates
// a session (a data-channel offer), is refused another's session, closes
// its own and is told so by the pushed events.

const EXAMPLE_DIR = path.resolve(HERE, '../../../docs/examples/node-backend');
const DATA_CHANNEL_OFFER = [
  'v=0', 'o=- 4611731400430051336 2 IN IP4 127.0.0.1', 's=-', 't=0 0',
  'a=group:BUNDLE 0', 'a=extmap-allow-mixed', 'a=msid-semantic: WMS',
  'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0',
  'a=candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host',
  'a=ice-ufrag:smok', 'a=ice-pwd:smoketestsmoketestsmoket', 'a=ice-options:trickle',
  'a=fingerprint:sha-256 ' + Array.from({ length: 32 }, (_, i) => (i * 7 % 256).toString(16).padStart(2, '0').toUpperCase()).join(':'),
  'a=setup:actpass', 'a=mid:0', 'a=sctp-port:5000', 'a=max-message-size:262144', '',
].join('\r\n');

async function exampleScenario(ctx) {
  const bin = requireBin();
  if (!existsSync(path.join(EXAMPLE_DIR, 'node_modules', 'ws'))) {
    throw new Error(`run \`npm ci\` in ${EXAMPLE_DIR} first`);
  }
  const { WebSocket } = await import(path.join(EXAMPLE_DIR, 'node_modules', 'ws', 'wrapper.mjs'));
  ctx.daemon = startDaemon(bin);
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  const backend = spawn(process.execPath, ['server.mjs'], {
    cwd: EXAMPLE_DIR,
    env: { ...process.env, KASKADE_CONTROL: ready.control, KASKADE_HTTP: ready.http, PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  ctx.backend = backend;
  diag.daemons['example backend'] = { stderr: [], exit: null };
  readline.createInterface({ input: backend.stderr }).on('line', (l) => pushTail(diag.daemons['example backend'].stderr, l));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the example backend did not say where it listens within 15 s')), 15_000);
    backend.once('exit', (code) => reject(new Error(`the example backend exited (${code})`)));
    readline.createInterface({ input: backend.stdout }).on('line', (l) => {
      const m = l.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  log(`example backend at ${url}`);
  const pageText = await (await fetch(url)).text();
  if (!pageText.includes('/kaskade.js')) throw new Error('the example page does not load /kaskade.js');
  const js = await fetch(`${url}kaskade.js`);
  const jsText = await js.text();
  if (!js.ok || !jsText.includes('export class KaskadeSession')) {
    throw new Error(`GET ${url}kaskade.js: ${js.status} ${jsText.slice(0, 200)}`);
  }

  const ws = new WebSocket(`${url.replace('http', 'ws')}ws?room=${ROOM_ID}&name=smoke`);
  const inbox = [];
  const waiters = [];
  ws.on('message', (d) => {
    const msg = JSON.parse(String(d));
    inbox.push(msg);
    for (const w of waiters.splice(0)) w();
  });
  const next = async (pred, what) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0];
      if (Date.now() > deadline) throw new Error(`no ${what} from the example backend within 10 s; got ${JSON.stringify(inbox)}`);
      await new Promise((r) => { waiters.push(r); setTimeout(r, 200); });
    }
  };
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const { room } = await next((m) => m.room, 'room');
  if (room.roomId !== ROOM_ID) throw new Error(`the room pushed first should be ${ROOM_ID}: ${JSON.stringify(room)}`);
  ws.send(JSON.stringify({ id: 1, method: 'CreateSession', request: { sdpOffer: DATA_CHANNEL_OFFER } }));
  const created = await next((m) => m.id === 1, 'CreateSession answer');
  if (created.error) throw new Error(`CreateSession through the example backend: ${JSON.stringify(created.error)}`);
  const { sessionId, sdpAnswer } = created.response;
  ws.send(JSON.stringify({ id: 2, method: 'CloseSession', request: { sessionId: 'SE0000000000000001' } }));
  const refused = await next((m) => m.id === 2, 'refusal');
  if (!refused.error || refused.error.code !== 'PERMISSION_DENIED') {
    throw new Error(`closing another's session should be refused, got ${JSON.stringify(refused)}`);
  }
  ws.send(JSON.stringify({ id: 3, method: 'CloseSession', request: { sessionId } }));
  const closedResp = await next((m) => m.id === 3, 'CloseSession answer');
  if (closedResp.error) throw new Error(`CloseSession: ${JSON.stringify(closedResp.error)}`);
  const ev = await next((m) => m.event && m.event.sessionClosed, 'session_closed event');
  if (ev.event.sessionClosed.sessionId !== sessionId || ev.event.sessionClosed.participantId !== 'smoke') {
    throw new Error(`unexpected session_closed ${JSON.stringify(ev.event)}`);
  }
  ws.close();
  return { answerLines: sdpAnswer.split('\n').length, refused: refused.error.code };
}

// ---------------------------------------------------------------- main
async function cleanup(ctx) {
  const steps = [
    async () => ctx.watch && ctx.watch.cancel(),
    async () => ctx.pages && Promise.all(Object.values(ctx.pages).map((p) => p.evaluate(() => window.kaskade.close()).catch(() => {}))),
    async () => ctx.context && (await Promise.race([ctx.context.close(), sleep(10_000)])),
    async () => ctx.rooms && ctx.rooms.close(),
    async () => ctx.sessions && ctx.sessions.close(),
    async () => (ctx.clients || []).forEach((c) => c.close()),
    async () => Promise.all((ctx.daemons || []).map(stopDaemon)),
    async () => ctx.pageServer && ctx.pageServer.close(),
    async () => ctx.backend && ctx.backend.kill('SIGTERM'),
    async () => ctx.gst && ctx.gst.kill('SIGKILL'),
    async () => ctx.gstViewer && ctx.gstViewer.kill('SIGKILL'),
    async () => rmSync(ctx.userDataDir, { recursive: true, force: true }),
    async () => ctx.certDir && rmSync(ctx.certDir, { recursive: true, force: true }),
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
    await Promise.race([Promise.all((ctx.daemons || []).map(stopDaemon)), sleep(8_000)]);
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
    } else if (SCENARIO === 'cascade') {
      const r = await cascadeScenario(ctx);
      if (VERBOSE) printDaemonTails();
      const c = r.compare;
      const vsA = c
        ? `; B − A on the same frames: ${c.gotMedian ?? '?'} ms (median of ${c.matched} matched), ` +
          `first frame on a subscriber on A ${r.firstFrameA ?? '?'} ms after its Subscribe`
        : '';
      console.log(`browser cascade: fra→ams framesDecoded=${r.media.frames} audioPackets=${r.media.audio} on B; ` +
        `first frame on B ${r.firstFrameB ?? '?'} ms after Subscribe (media flowing after ${r.media.mediaSecs}s)${vsA}; ` +
        `link datagrams_sent=${r.link && r.link.datagrams_sent} rtt=${r.link && r.link.rtt_us}us; total ${since()}s`);
    } else if (SCENARIO === 'whip') {
      const r = await whipScenario(ctx, {
        startDaemon, requireBin, startPageServer, launchBrowser, checkDaemon, log, sleep, diag, pushTail,
        roomId: ROOM_ID, mediaTimeoutMs: MEDIA_TIMEOUT_MS, verbose: VERBOSE,
      });
      if (VERBOSE) printDaemonTails();
      console.log(`browser whip: a WHEP page decodes a WHIP page's simulcast camera (${r.width}x${r.height}, ${r.frames} frames; ` +
        `layer=low ${r.lowWidth}x${r.lowHeight}) ${r.mediaMs} ms after its POST; PATCH 204, DELETE 200/404; total ${since()}s`);
    } else if (SCENARIO === 'gst-whip') {
      const r = await gstWhipScenario(ctx, {
        startDaemon, requireBin, startPageServer, launchBrowser, checkDaemon, log, sleep, diag, pushTail,
        roomId: ROOM_ID, mediaTimeoutMs: MEDIA_TIMEOUT_MS, verbose: VERBOSE,
      });
      if (VERBOSE) printDaemonTails();
      console.log(`browser gst-whip: GStreamer webrtcbin with its RSA certificate refused at DTLS (the abandoned session closed ` +
        `as "dtls failed"); with an ECDSA one its H.264 + Opus decode in a WHEP page (${r.width}x${r.height}, ${r.frames} frames, ` +
        `${r.audio} audio packets) ${r.mediaMs} ms after the WHEP POST, and in a GStreamer WHEP viewer (${r.gstViewer.width}x${r.gstViewer.height}, ` +
        `${r.gstViewer.frames} frames); DELETE 200; total ${since()}s`);
    } else if (SCENARIO === 'demo-tls') {
      const r = await demoTlsScenario(ctx, {
        startDaemon, requireBin, launchBrowser, checkDaemon, log, sleep, diag, pushTail,
        mediaTimeoutMs: MEDIA_TIMEOUT_MS, verbose: VERBOSE,
      });
      if (VERBOSE) printDaemonTails();
      console.log(`browser demo-tls: two https demo pages with a room token decode each other (${r.width}x${r.height}) ` +
        `${r.mediaMs} ms after opening; another room's token refused ("${r.refused}"); total ${since()}s`);
    } else if (SCENARIO === 'tcp') {
      const r = await tcpScenario(ctx);
      try {
        await rpc(ctx.rooms, 'RoomService', 'DeleteRoom', { room_id: ROOM_ID });
      } catch (e) {
        log(`note: ${e.message}`);
      }
      if (VERBOSE) printDaemonTails();
      console.log(`browser tcp: UDP dropped, both pages connected over ICE-TCP (publisher ${r.pubPair}, ` +
        `subscriber ${r.subPair}; router: ${r.active} active TCP connections); framesDecoded=${r.media.frames} ` +
        `audioPackets=${r.media.audio} (media flowing after ${r.media.mediaSecs}s); total ${since()}s`);
    } else if (SCENARIO === 'example') {
      const r = await exampleScenario(ctx);
      console.log(`example backend: page and kaskade.js served, CreateSession answered (${r.answerLines} SDP lines), ` +
        `session_closed pushed, a foreign session refused (${r.refused}); total ${since()}s`);
    } else if (SCENARIO === 'demo') {
      const r = await demoScenario(ctx);
      if (VERBOSE) printDaemonTails();
      console.log(`browser demo: both pages decode each other (alice sees ${r.aliceSees}, bob sees ${r.bobSees}) ` +
        `after ${r.mediaSecs}s; bob's pick "low" moved alice's tile ${r.before}px -> ${r.after}px wide in ${r.switchMs} ms ` +
        `(router layer ${r.layer}); bob's leaving cleared alice's tile in ${r.leftMs} ms; total ${since()}s`);
    } else if (SCENARIO === 'simulcast' || SCENARIO === 'e2ee') {
      // A fixed test key: this scenario checks the router, not key exchange.
      const e2eeKey = SCENARIO === 'e2ee' ? Array.from({ length: 16 }, (_, i) => (i * 37 + 11) & 0xff) : null;
      const r = await simulcastScenario(ctx, { e2eeKey });
      try {
        await rpc(ctx.rooms, 'RoomService', 'DeleteRoom', { room_id: ROOM_ID });
      } catch (e) {
        log(`note: ${e.message}`);
      }
      if (VERBOSE) {
        printDaemonTails();
      }
      const ms = (v) => (v === null || v === undefined ? '?' : `${v}`);
      const steps = r.results.map((x) =>
        x.already
          ? `layer ${x.layer} -> ${x.size} already before the call`
          : `layer ${x.layer} -> ${x.size} in ${x.statsMs} ms (first frame ${ms(x.shownMs)} ms, router switch ${ms(x.routerMs)} ms)`);
      const e2ee = r.e2ee ? `; e2ee: ${r.e2ee.pub.encrypted} frames encrypted, ${r.e2ee.sub.decrypted} decrypted, ${r.e2ee.sub.failed} failed` : '';
      console.log(`browser ${SCENARIO} (settle ${SETTLE_MS} ms): ${steps.join('; ')}; ${r.layerEvents.length} LayerChanged event(s); ` +
        `video after ${r.media.mediaSecs}s${e2ee}; total ${since()}s`);
    } else {
      const r = await fullScenario(ctx);
      // An AEAD profile (AES-GCM) costs a fifth of AES-CM + HMAC-SHA1 per packet.
      if (!/GCM/.test(r.srtpCipher || '')) {
        throw new Error(`Chromium negotiated SRTP ${r.srtpCipher}, not an AES-GCM profile`);
      }
      log(`selected pair: ${r.pair ? `${r.pair.local} -> ${r.pair.remote}` : 'unknown'}; codecs ${r.videoCodec}, ${r.audioCodec}`);
      try {
        await rpc(ctx.rooms, 'RoomService', 'DeleteRoom', { room_id: ROOM_ID });
      } catch (e) {
        log(`note: ${e.message}`);
      }
      if (VERBOSE) {
        printDaemonTails();
      }
      console.log(`browser e2e: framesDecoded=${r.frames} audioPackets=${r.audio} in ${since()}s (media flowing after ${r.mediaSecs}s); ` +
        `Chromium negotiated SRTP ${r.srtpCipher} over DTLS ${r.dtlsCipher}`);
    }
  } catch (e) {
    code = 1;
    if (!finished && ctx.failureInfo) {
      await Promise.race([ctx.failureInfo().catch((err) => diag.extra.push(`(gathering failed: ${err.message})`)), sleep(8_000)]);
    }
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
