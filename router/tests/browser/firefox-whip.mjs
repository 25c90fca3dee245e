// run.mjs --scenario firefox-whip: the whip scenario (whip.mjs) with Firefox
// pages (Debian's firefox-esr, driven by Puppeteer over WebDriver BiDi): Firefox
// publishes its fake camera as three simulcast layers and its microphone
// through WHIP, a second Firefox page plays it through WHEP and must decode
// frames and receive audio, and a third plays it with ?layer=low and must
// decode the lowest layer's width (Firefox's simulcast through the router's
// layer selection). Then each page DELETEs its resource twice (200, then 404).
//
// Firefox gathers no loopback candidates, and none at all without a default
// route, so browser.rs runs this in a network namespace of its own with a veth
// address (KASKADE_TEST_MEDIA_IP) that the router's media sockets bind to.

import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import puppeteer from 'puppeteer-core';
import { whipScenario } from './whip.mjs';
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

// The whip scenario (whip.mjs) with Firefox pages and the namespace's address.
export function firefoxWhipScenario(ctx) {
  return whipScenario(ctx, {
    startDaemon: (bin) => startDaemon(bin, { mediaBind: mediaIp() }),
    launchBrowser: () => firefoxContext(ctx),
    requireBin, startPageServer, checkDaemon, log, sleep, diag, pushTail,
    roomId: ROOM_ID, mediaTimeoutMs: MEDIA_TIMEOUT_MS, verbose: VERBOSE,
  });
}

// For run.mjs's cleanup: closes Firefox and removes its profile.
export async function closeFirefox(ctx) {
  if (ctx.firefox) await Promise.race([ctx.firefox.close().catch(() => {}), sleep(10_000)]);
  if (ctx.firefoxProfile) rmSync(ctx.firefoxProfile, { recursive: true, force: true });
}
