// run.mjs --scenario simulcast and --scenario e2ee.

import grpc from '@grpc/grpc-js';

import { ROOM_ID, VERBOSE, diag, log, sleep, collectStats, checkDaemon, widthMatches } from './harness.mjs';
import { startRoom, startPublisher, startSubscriber, waitForMedia } from './room.mjs';

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
export const SETTLE_MS = Number(process.env.KASKADE_E2E_SETTLE_MS ?? 1000);
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
export async function simulcastScenario(ctx, { e2eeKey = null } = {}) {
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
