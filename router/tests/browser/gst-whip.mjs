// run.mjs --scenario gst-whip: a WebRTC stack other than a browser's and
// str0m publishes over WHIP, and Chromium plays it over WHEP.
// router/tests/interop/gst_whip.py drives GStreamer's webrtcbin (libnice ICE,
// OpenSSL DTLS, libsrtp): first with GStreamer's own RSA certificate, which
// kaskade's DTLS refuses (documented in docs/whip.md: the publisher's
// connection fails; the router closes the abandoned session as "dtls failed"
// at the join timeout and counts a dtls join failure), then with an
// ECDSA certificate, publishing the test pattern as H.264 (openh264,
// constrained baseline, as OBS sends it) and a tone as Opus. A Chromium page
// plays that through WHEP and must decode H.264 frames 640 px wide and
// receive audio; so must a GStreamer WHEP viewer (webrtcbin, decodebin). The
// viewer and the publisher then DELETE their resources (200).

import { spawn } from 'node:child_process';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SCRIPT = path.join(HERE, '..', 'interop', 'gst_whip.py');
const PYTHON = process.env.KASKADE_TEST_GST_PYTHON || '/usr/bin/python3';

// Starts the GStreamer publisher; its lines go to `lines` and the log.
function startPublisher(url, cert, extra, { log, pushTail, diag }) {
  const lines = [];
  const args = [SCRIPT, url, '--codec', 'h264', '--cert', cert, ...extra];
  diag.extra.push(`gst publisher: ${PYTHON} ${args.join(' ')}`);
  const child = spawn(PYTHON, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = new Promise((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
    child.once('error', (err) => resolve({ code: null, error: err }));
  });
  readline.createInterface({ input: child.stdout }).on('line', (l) => {
    lines.push(l);
    log(`  gst (${cert}): ${l}`);
  });
  const stderr = [];
  readline.createInterface({ input: child.stderr }).on('line', (l) => {
    if (!/CRITICAL|^\s*$/.test(l)) pushTail(stderr, l, 50);
  });
  return { child, lines, exited, stderr };
}

async function waitForLine(p, re, ms, sleep) {
  const end = Date.now() + ms;
  for (;;) {
    const hit = p.lines.find((l) => re.test(l));
    if (hit) return hit;
    if (Date.now() > end) return null;
    await sleep(100);
  }
}

function metric(text, series) {
  return text
    .split('\n')
    .filter((l) => l.startsWith(series))
    .reduce((sum, l) => sum + Number(l.split(' ').pop()), 0);
}

export async function gstWhipScenario(ctx, h) {
  const { startDaemon, requireBin, startPageServer, launchBrowser, checkDaemon, log, sleep, diag, pushTail, roomId, mediaTimeoutMs, verbose } = h;
  ctx.daemon = startDaemon(requireBin());
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  if (typeof ready.http !== 'string') throw new Error(`no HTTP listener in ${JSON.stringify(ready)}`);
  const base = `http://${ready.http}`;
  const whipUrl = `${base}/whip/${roomId}`;
  const scrape = async () => (await fetch(`http://${ready.metrics}/metrics`)).text();

  // 1. GStreamer's own certificate (RSA): refused at the DTLS handshake. It
  // leaves its resource (--keep), so the router ends the session itself.
  const rsaStart = Date.now();
  const rsa = startPublisher(whipUrl, 'gstreamer', ['--keep'], { log, pushTail, diag });
  ctx.gst = rsa.child;
  const rsaEnd = await Promise.race([rsa.exited, sleep(40_000).then(() => null)]);
  if (!rsaEnd) throw new Error('the RSA-certificate publisher neither connected nor failed within 40 s');
  if (rsa.lines.some((l) => l === 'connected')) {
    throw new Error('the publisher with an RSA DTLS certificate connected: dimpl takes RSA now, update docs/whip.md and this scenario');
  }
  if (!rsa.lines.some((l) => /^error: connection failed/.test(l))) {
    throw new Error(`the RSA-certificate publisher ended without a DTLS failure: ${rsa.lines.join(' | ')} ${rsa.stderr.join(' | ')}`);
  }
  log('GStreamer with its RSA certificate: refused at DTLS, as documented');

  // 2. An ECDSA certificate: H.264 and Opus through WHIP.
  const pub = startPublisher(whipUrl, 'ecdsa', [], { log, pushTail, diag });
  ctx.gst = pub.child;
  const answered = await waitForLine(pub, /^answer 201 /, 15_000, sleep);
  if (!answered) throw new Error(`the WHIP POST was not answered 201: ${pub.lines.join(' | ')} ${pub.stderr.join(' | ')}`);
  if (!(await waitForLine(pub, /^connected$/, 20_000, sleep))) {
    throw new Error(`the GStreamer publisher did not connect: ${pub.lines.join(' | ')} ${pub.stderr.join(' | ')}`);
  }
  log(`GStreamer publisher connected (${answered})`);

  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.context = await launchBrowser(ctx.userDataDir);
  const page = ctx.context.pages()[0];
  diag.consoles.viewer = [];
  page.on('console', (m) => {
    pushTail(diag.consoles.viewer, `${m.type()}: ${m.text()}`, 500);
    if (verbose) console.log(`  (viewer) ${m.type()}: ${m.text()}`);
  });
  await page.goto(`${pageSrv.url}whip.html`, { waitUntil: 'load', timeout: 15_000 });
  await page.waitForFunction(() => !!window.whip, null, { timeout: 10_000 });
  const played = await page.evaluate((url) => window.whip.play(url), `${base}/whep/${roomId}`);
  diag.sdp['WHEP offer'] = played.offer;
  diag.sdp['WHEP answer'] = played.answer;
  if (!/a=rtpmap:\d+ H264\/90000/.test(played.answer)) throw new Error('the WHEP answer offers no H.264');

  const mediaStart = Date.now();
  let s;
  for (;;) {
    checkDaemon(ctx);
    s = await page.evaluate(() => window.whip.stats());
    diag.lastStats = { at: Date.now(), viewer: s };
    if (s && s.video.framesDecoded > 30 && s.video.width > 0 && s.audio.packets > 20) break;
    if (pub.child.exitCode !== null) throw new Error(`the GStreamer publisher exited: ${pub.lines.join(' | ')}`);
    if (Date.now() - mediaStart > mediaTimeoutMs) {
      throw new Error(`the WHEP viewer did not decode the GStreamer publisher within ${mediaTimeoutMs / 1000} s: ${JSON.stringify(s)}`);
    }
    await sleep(250);
  }
  const mediaMs = Date.now() - mediaStart;
  if (s.video.width !== 640) throw new Error(`decoded ${s.video.width}x${s.video.height}, not the publisher's 640x360`);
  log(`WHEP viewer decodes ${s.video.width}x${s.video.height}, ${s.video.framesDecoded} frames, ${s.audio.packets} audio packets`);

  // 3. GStreamer as the WHEP viewer too (a recorder or compositor would be):
  // webrtcbin's receive-only lines, decodebin, openh264dec and opusdec.
  const view = startPublisher(`${base}/whep/${roomId}`, 'ecdsa', ['--play'], { log: verbose ? log : () => {}, pushTail, diag });
  ctx.gstViewer = view.child;
  const viewStart = Date.now();
  let decoded = null;
  for (;;) {
    const last = [...view.lines].reverse().find((l) => /^decoded /.test(l));
    const m = last && /^decoded (\d+) (\d+)x(\d+) (\d+)$/.exec(last);
    if (m && Number(m[1]) > 30 && Number(m[4]) > 20) {
      decoded = { frames: Number(m[1]), width: Number(m[2]), height: Number(m[3]), audio: Number(m[4]) };
      break;
    }
    if (view.child.exitCode !== null) throw new Error(`the GStreamer viewer exited: ${view.lines.slice(-5).join(' | ')} ${view.stderr.join(' | ')}`);
    if (Date.now() - viewStart > mediaTimeoutMs) {
      throw new Error(`the GStreamer WHEP viewer did not decode within ${mediaTimeoutMs / 1000} s: ${view.lines.slice(-5).join(' | ')}`);
    }
    await sleep(250);
  }
  if (decoded.width !== 640) throw new Error(`the GStreamer viewer decoded ${decoded.width}x${decoded.height}, not 640x360`);
  log(`GStreamer WHEP viewer decodes ${decoded.width}x${decoded.height}, ${decoded.frames} frames, ${decoded.audio} audio buffers`);
  view.child.kill('SIGTERM');
  await Promise.race([view.exited, sleep(10_000)]);
  const viewDeleted = view.lines.find((l) => /^deleted /.test(l));
  if (viewDeleted !== 'deleted 200') throw new Error(`the GStreamer viewer's DELETE: ${viewDeleted || 'none'}`);
  ctx.gstViewer = null;

  // The publisher leaves: SIGTERM makes it DELETE its resource.
  pub.child.kill('SIGTERM');
  await Promise.race([pub.exited, sleep(10_000)]);
  const deleted = pub.lines.find((l) => /^deleted /.test(l));
  if (deleted !== 'deleted 200') throw new Error(`the publisher's DELETE: ${deleted || 'none'}`);
  ctx.gst = null;

  // The abandoned RSA session ends at the join timeout (30 s) as a DTLS
  // failure, with its reason; neither attempt is the router's failure.
  let text;
  for (;;) {
    text = await scrape();
    if (metric(text, 'kaskade_join_failures_total{step="dtls"}') >= 1) break;
    if (Date.now() - rsaStart > 45_000) throw new Error('the RSA session was not counted as a dtls join failure within 45 s');
    await sleep(500);
  }
  const failures = metric(text, 'kaskade_session_failures_total');
  if (failures !== 0) throw new Error(`kaskade_session_failures_total is ${failures}`);
  const closedAs = ctx.daemon && diag.daemons.daemon.stderr.find((l) => /session closed by the media plane/.test(l));
  if (!closedAs || !/reason="dtls failed"/.test(closedAs)) throw new Error(`the RSA session's close: ${closedAs || 'not logged'}`);
  log(`the RSA session: ${closedAs.replace(/^.*session closed/, 'session closed')}, ${Math.round((Date.now() - rsaStart) / 1000)} s after its POST`);
  return { mediaMs, width: s.video.width, height: s.video.height, frames: s.video.framesDecoded, audio: s.audio.packets, gstViewer: decoded };
}
