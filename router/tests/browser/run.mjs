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

// The harness is in harness.mjs, the two-page room in room.mjs and each
// scenario in its own file; this file runs the chosen one under a watchdog,
// cleans up and prints its summary line.

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import {
  SELF_CHECK, SCENARIO, SCENARIOS, VERBOSE, TOTAL_TIMEOUT_MS, MEDIA_TIMEOUT_MS, ROOM_ID, since, log, sleep,
  diag, pushTail, dumpDiagnostics, printDaemonTails, rpc, startDaemon, stopDaemon, startPageServer,
  launchBrowser, checkDaemon, requireBin,
} from './harness.mjs';
import { selfCheck } from './self-check.mjs';
import { fullScenario } from './basic.mjs';
import { tcpScenario } from './tcp.mjs';
import { SETTLE_MS, simulcastScenario } from './simulcast.mjs';
import { cascadeScenario } from './cascade.mjs';
import { demoScenario } from './demo.mjs';
import { exampleScenario } from './example.mjs';
import { whipScenario } from './whip.mjs';
import { gstWhipScenario } from './gst-whip.mjs';
import { closeFirefox, firefoxContext, firefoxWhipScenario, mediaIp } from './firefox-whip.mjs';
import { firefoxChromiumScenario, firefoxScenario } from './firefox.mjs';
import { demoTlsScenario } from './demo-tls.mjs';

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
    async () => closeFirefox(ctx),
    async () => ctx.chromium && (await Promise.race([ctx.chromium.close(), sleep(10_000)])),
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
    } else if (SCENARIO === 'firefox') {
      const r = await firefoxScenario(ctx);
      if (VERBOSE) printDaemonTails();
      console.log(`browser firefox: framesDecoded=${r.frames} audioPackets=${r.audio} in ${since()}s (media flowing after ${r.mediaSecs}s); ` +
        `codecs ${r.videoCodec}, ${r.audioCodec}; SRTP ${r.srtpCipher} over DTLS ${r.dtlsCipher}`);
    } else if (SCENARIO === 'firefox-chromium') {
      const { toChromium: c, toFirefox: f } = await firefoxChromiumScenario(ctx);
      if (VERBOSE) printDaemonTails();
      console.log(`browser firefox-chromium: Firefox's simulcast camera decoded in Chromium (${c.frames} frames, ${c.videoCodec}, ` +
        `${c.audio} audio packets), Chromium's in Firefox (${f.frames} frames, ${f.videoCodec}, ${f.audio} audio packets); total ${since()}s`);
    } else if (SCENARIO === 'firefox-whip') {
      const r = await firefoxWhipScenario(ctx);
      if (VERBOSE) printDaemonTails();
      console.log(`browser firefox-whip: a Firefox WHEP page decodes a Firefox WHIP page's simulcast camera (${r.width}x${r.height}, ` +
        `${r.frames} frames; layer=low ${r.lowWidth}x${r.lowHeight}) ${r.mediaMs} ms after its POST; PATCH 204, DELETE 200/404; total ${since()}s`);
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
    } else if (SCENARIO === 'tcp' || SCENARIO === 'firefox-tcp') {
      const firefox = SCENARIO === 'firefox-tcp';
      const r = await tcpScenario(ctx, firefox ? { launch: firefoxContext, ip: mediaIp() } : {});
      try {
        await rpc(ctx.rooms, 'RoomService', 'DeleteRoom', { room_id: ROOM_ID });
      } catch (e) {
        log(`note: ${e.message}`);
      }
      if (VERBOSE) printDaemonTails();
      console.log(`browser ${SCENARIO}: UDP dropped, both ${firefox ? 'Firefox ' : ''}pages connected over ICE-TCP (publisher ${r.pubPair}, ` +
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
