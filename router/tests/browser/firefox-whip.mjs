// run.mjs --scenario firefox-whip: Firefox (Debian's firefox-esr, driven by
// Puppeteer over WebDriver BiDi) publishes its fake camera as three simulcast
// layers and its microphone through WHIP, a second Firefox page plays it
// through WHEP and must decode frames and receive audio, and a third plays it
// with ?layer=low and must decode the lowest layer's width (Firefox's
// simulcast through the router's layer selection). Then each page DELETEs its
// resource twice (200, then 404).
//
// Firefox gathers no loopback candidates, and none at all without a default
// route, so browser.rs runs this in a network namespace of its own with a veth
// address (KASKADE_TEST_MEDIA_IP) that the router's media sockets bind to.

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import {
  diag, log, sleep, pushTail, startDaemon, requireBin, startPageServer, checkDaemon, ROOM_ID, MEDIA_TIMEOUT_MS, VERBOSE,
} from './harness.mjs';

const FIREFOX = process.env.KASKADE_TEST_FIREFOX || '/usr/bin/firefox-esr';

// A fake camera and microphone that need no permission prompt, and host
// candidates without mDNS names (Puppeteer writes these into the profile).
const FIREFOX_PREFS = {
  'media.navigator.streams.fake': true,
  'media.navigator.permission.disabled': true,
  'media.peerconnection.ice.obfuscate_host_addresses': false,
};

// The address the media sockets bind to: the namespace's veth address.
export function mediaIp() {
  const ip = process.env.KASKADE_TEST_MEDIA_IP;
  if (!ip) throw new Error('KASKADE_TEST_MEDIA_IP is not set (browser.rs sets it with the namespace it makes)');
  return ip;
}

// Starts Firefox (closed by closeFirefox); returns the Puppeteer browser.
export async function launchFirefox(ctx) {
  ctx.firefoxProfile = mkdtempSync(path.join(os.tmpdir(), 'kaskade-e2e-firefox-'));
  log(`launching ${FIREFOX}`);
  const browser = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    userDataDir: ctx.firefoxProfile,
    extraPrefsFirefox: FIREFOX_PREFS,
    protocolTimeout: 30_000,
  });
  ctx.firefox = browser;
  log(`Firefox ${await browser.version()}`);
  return browser;
}

// Firefox as the browser context room.mjs expects (newPage, pages, close).
export async function firefoxContext(ctx) {
  const browser = await launchFirefox(ctx);
  return { newPage: () => browser.newPage(), pages: () => [], close: () => browser.close() };
}

export async function firefoxWhipScenario(ctx) {
  ctx.daemon = startDaemon(requireBin(), { mediaBind: mediaIp() });
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  const browser = await launchFirefox(ctx);
  const open = async (role) => {
    diag.consoles[role] = diag.consoles[role] || [];
    const page = await browser.newPage();
    page.on('console', (m) => {
      pushTail(diag.consoles[role], `${m.type()}: ${m.text()}`, 500);
      if (VERBOSE) console.log(`  (${role}) ${m.type()}: ${m.text()}`);
    });
    await page.goto(`${pageSrv.url}whip.html`, { waitUntil: 'load', timeout: 15_000 });
    await page.waitForFunction(() => !!window.whip, { timeout: 10_000 });
    return page;
  };
  const base = `http://${ready.http}`;
  const pub = await open('pub');
  const published = await pub.evaluate((url) => window.whip.publish(url), `${base}/whip/${ROOM_ID}`);
  diag.sdp['WHIP offer (Firefox)'] = published.offer;
  diag.sdp['WHIP answer'] = published.answer;
  log(`WHIP: 201, Location ${published.location}`);
  const upStart = Date.now();
  for (;;) {
    checkDaemon(ctx);
    const s = await pub.evaluate(() => window.whip.stats());
    diag.lastStats = { at: Date.now(), publisher: s };
    if (s && s.connectionState === 'connected' && s.sent > 50) break;
    if (Date.now() - upStart > 20_000) throw new Error(`the Firefox WHIP publisher did not connect within 20 s: ${JSON.stringify(s)}`);
    await sleep(200);
  }
  const sub = await open('sub');
  const low = await open('low');
  const played = await sub.evaluate((url) => window.whip.play(url), `${base}/whep/${ROOM_ID}`);
  diag.sdp['WHEP offer (Firefox)'] = played.offer;
  diag.sdp['WHEP answer'] = played.answer;
  await low.evaluate((url) => window.whip.play(url), `${base}/whep/${ROOM_ID}?layer=low`);

  const mediaStart = Date.now();
  const decodes = (s) => s && s.video.framesDecoded > 20 && s.video.width > 0 && s.audio.packets > 20;
  let s;
  let l;
  for (;;) {
    checkDaemon(ctx);
    [s, l] = await Promise.all([sub.evaluate(() => window.whip.stats()), low.evaluate(() => window.whip.stats())]);
    diag.lastStats = { at: Date.now(), viewer: s, lowViewer: l };
    if (decodes(s) && decodes(l)) break;
    if (Date.now() - mediaStart > MEDIA_TIMEOUT_MS) {
      throw new Error(`the Firefox WHEP viewers did not decode within ${MEDIA_TIMEOUT_MS / 1000} s: ${JSON.stringify(diag.lastStats)}`);
    }
    await sleep(250);
  }
  const mediaMs = Date.now() - mediaStart;
  log(`Firefox WHEP viewer decodes ${s.video.width}x${s.video.height}, ${s.video.framesDecoded} frames, ${s.audio.packets} audio packets`);
  // The camera is 1280 wide: its lowest simulcast layer is a quarter of that.
  if (l.video.width > 400) throw new Error(`the layer=low viewer decodes ${l.video.width}px wide, not Firefox's lowest layer (320)`);
  log(`layer=low viewer decodes ${l.video.width}x${l.video.height}`);
  for (const [name, page] of [['viewer', sub], ['low viewer', low], ['publisher', pub]]) {
    const [first, second] = await page.evaluate(() => window.whip.leave());
    if (first !== 200 || second !== 404) throw new Error(`${name}: DELETE answered ${first} then ${second}, not 200 then 404`);
  }
  log('DELETE 200 then 404 on every resource');
  return { mediaMs, width: s.video.width, height: s.video.height, frames: s.video.framesDecoded, lowWidth: l.video.width, lowHeight: l.video.height };
}

// For run.mjs's cleanup: closes Firefox and removes its profile.
export async function closeFirefox(ctx) {
  if (ctx.firefox) await Promise.race([ctx.firefox.close().catch(() => {}), sleep(10_000)]);
  if (ctx.firefoxProfile) rmSync(ctx.firefoxProfile, { recursive: true, force: true });
}
