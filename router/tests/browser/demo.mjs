// run.mjs --scenario demo.

import {
  MEDIA_TIMEOUT_MS, POLL_MS, ROOM_ID, VERBOSE, diag, log, since, sleep, pushTail, startDaemon, launchBrowser,
  checkDaemon, requireBin, widthMatches,
} from './harness.mjs';

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

export async function demoScenario(ctx) {
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
