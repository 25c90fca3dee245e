// The shared harness of run.mjs: its flags and settings (from argv and the
// environment, see run.mjs), logging, the diagnostics dumped on a failure,
// SDP and gRPC helpers, the daemon, the page server and the browser. One
// instance of each (diag, the flags) for every scenario module.

import { spawn } from 'node:child_process';
import { readFileSync, existsSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

import grpc from '@grpc/grpc-js';
import protoLoader from '@grpc/proto-loader';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const PROTO_DIR = path.resolve(HERE, '../../../protocol/proto');
export const PROTO_FILES = ['kaskade/v1/room.proto', 'kaskade/v1/session.proto', 'kaskade/v1/cascade.proto'];
export const CHROMIUM = process.env.KASKADE_CHROMIUM || '/usr/bin/chromium';
export const SELF_CHECK = process.argv.includes('--self-check');
export const SCENARIO = (() => {
  const i = process.argv.indexOf('--scenario');
  const eq = process.argv.find((a) => a.startsWith('--scenario='));
  return eq ? eq.slice('--scenario='.length) : i >= 0 ? process.argv[i + 1] : 'basic';
})();
export const SCENARIOS = ['basic', 'simulcast', 'cascade', 'demo', 'demo-tls', 'example', 'e2ee', 'whip', 'gst-whip', 'firefox', 'firefox-chromium', 'firefox-whip', 'tcp', 'firefox-tcp'];
export const VERBOSE = process.env.KASKADE_E2E_VERBOSE === '1';
export const TOTAL_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_TIMEOUT_S || 120);
export const MEDIA_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_MEDIA_S || 45);
export const READY_TIMEOUT_MS = 20_000;
export const RPC_TIMEOUT_MS = 10_000;
export const POLL_MS = 500;
export const ROOM_ID = `e2e-${process.pid}-${Date.now()}`;

export const CHROMIUM_ARGS = [
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

export const t0 = Date.now();
export const since = () => ((Date.now() - t0) / 1000).toFixed(2);
export const log = (...args) => console.log(`[e2e +${since()}s]`, ...args);
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------- diagnostics
export const diag = {
  // label -> { stderr: tail of its stderr (and stray stdout) lines, exit }
  daemons: {},
  consoles: { pub: [], sub: [] }, // role -> page console lines
  lastStats: null,
  sdp: {}, // label -> SDP, every description exchanged
  events: null, // WatchEvents messages, when a scenario watches the room
  extra: [], // scenario-specific state gathered on failure
};
export const ROLE_NAMES = { pub: 'publisher', sub: 'subscriber', subA: 'second subscriber (router A)', alice: 'demo page alice', bob: 'demo page bob' };
export const TAIL_LINES = 300;
export function pushTail(arr, line, max = TAIL_LINES) {
  arr.push(line);
  if (arr.length > max) arr.splice(0, arr.length - max);
}

export function dumpDiagnostics(reason) {
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

export function printDaemonTails() {
  for (const [label, d] of Object.entries(diag.daemons)) {
    console.log(`---- ${label} stderr tail ----\n${d.stderr.join('\n')}`);
  }
}

// ---------------------------------------------------------------- SDP helpers
export function candidatesOf(sdp) {
  return sdp
    .split(/\r?\n/)
    .filter((l) => l.startsWith('a=candidate:'))
    .map((l) => l.slice(2));
}
export function mediaLinesOf(sdp) {
  return sdp
    .split(/\r?\n/)
    .filter((l) => l.startsWith('m='))
    .map((l) => l.split(' ')[0].slice(2));
}
export function describeOffer(label, sdp, { all = true } = {}) {
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
export function loadApi() {
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

export function rpc(client, service, method, request, { quiet = false, timeoutMs = RPC_TIMEOUT_MS } = {}) {
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
// `label` names the daemon in the diagnostics; `extraArgs` follow the common ones;
// `mediaBind` is the media sockets' address (loopback unless a scenario runs in a
// namespace of its own, where a browser may not gather loopback candidates).
export function startDaemon(bin, { label = 'daemon', extraArgs = [], mediaBind = '127.0.0.1' } = {}) {
  const args = [
    'serve',
    '--control-listen', '127.0.0.1:0',
    '--metrics-listen', '127.0.0.1:0',
    '--media-bind', mediaBind,
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

export function signalDaemon(child, sig) {
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

export async function stopDaemon(d) {
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
export function startPageServer() {
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
export async function launchBrowser(userDataDir, extraArgs = []) {
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

export async function openPage(context, role, url, existing) {
  const page = existing || (await context.newPage());
  page.on('console', (m) => {
    const line = `[${since()}s] ${m.type()}: ${m.text()}`;
    pushTail(diag.consoles[role], line, 500);
    if (VERBOSE) console.log(`  (${role}) ${line}`);
  });
  page.on('pageerror', (e) => pushTail(diag.consoles[role], `[${since()}s] pageerror: ${e.message}`, 500));
  page.on('crash', () => pushTail(diag.consoles[role], `[${since()}s] PAGE CRASHED`, 500));
  await page.goto(url, { waitUntil: 'load', timeout: 15_000 });
  // Polled with evaluate: the same on Playwright's and Puppeteer's pages.
  const end = Date.now() + 10_000;
  while (!(await page.evaluate(() => !!window.kaskade))) {
    if (Date.now() > end) throw new Error(`${role}: window.kaskade did not appear within 10 s`);
    await sleep(100);
  }
  return page;
}

// `subKey` names the subscriber in diag.lastStats (scenarios with several).
export async function collectStats(pub, sub, subKey = 'subscriber') {
  const [p, s] = await Promise.all([
    pub.evaluate(() => window.kaskade.stats()).catch((e) => ({ error: String(e) })),
    sub.evaluate(() => window.kaskade.stats()).catch((e) => ({ error: String(e) })),
  ]);
  diag.lastStats = { ...(diag.lastStats || {}), at: `+${since()}s`, publisher: p, [subKey]: s };
  return { p, s };
}

// ---------------------------------------------------------------- for the scenarios
export function checkDaemon(ctx) {
  for (const d of ctx.daemons || []) {
    if (d.child.exitCode !== null || d.child.signalCode !== null) {
      throw new Error(`${d.label} died during the test (${diag.daemons[d.label].exit})`);
    }
  }
}

export function requireBin() {
  const bin = process.env.KASKADE_BIN;
  if (!bin) throw new Error('KASKADE_BIN is not set (path to the kaskade binary)');
  if (!existsSync(bin)) throw new Error(`KASKADE_BIN=${bin} does not exist (build it with cargo build -p kaskade-router)`);
  return bin;
}

// Chrome may round a layer's size (1276 instead of 1280, say).
export const widthMatches = (w, expected) => !!w && Math.abs(w - expected) <= Math.max(4, 0.03 * expected);
