// run.mjs --scenario firefox: the basic scenario with Firefox pages; and
// --scenario firefox-chromium, a room of both (below). A
// Firefox page publishes its fake camera and microphone with kaskade.js
// through the gRPC signalling, a second Firefox page subscribes (data channel
// first, then the router's offer) and must decode video, receive audio and
// open its data channel. Runs in browser.rs's veth namespace (see
// firefox-whip.mjs).

import { diag, launchBrowser, log, openPage } from './harness.mjs';
import { startRoom, startPublisher, startSubscriber, waitForMedia } from './room.mjs';
import { firefoxContext, mediaIp } from './firefox-whip.mjs';

export async function firefoxScenario(ctx) {
  const room = await startRoom(ctx, { launch: firefoxContext, mediaBind: mediaIp() });
  const { tracks } = await startPublisher(ctx, room, { audio: true });
  const kinds = tracks.map((t) => t.kind).sort().join(',');
  if (kinds !== 'TRACK_KIND_AUDIO,TRACK_KIND_VIDEO') {
    throw new Error(`CreateSession for the Firefox publisher should list one audio and one video track, got ${JSON.stringify(tracks)}`);
  }
  await startSubscriber(ctx, room, tracks.map((t) => t.track_id));
  return waitForMedia(ctx);
}

// run.mjs --scenario firefox-chromium: a mixed room. Firefox publishes its
// camera as three simulcast layers (and its microphone) with kaskade.js, a
// Chromium page subscribes and must decode; Chromium publishes its camera and
// microphone, and the Firefox subscriber page must decode that.
export async function firefoxChromiumScenario(ctx) {
  const room = await startRoom(ctx, { launch: firefoxContext, mediaBind: mediaIp() });
  ctx.chromium = await launchBrowser(ctx.userDataDir);
  const url = ctx.pageServerUrl;
  diag.consoles.crpub = [];
  diag.consoles.crsub = [];
  const crSub = await openPage(ctx.chromium, 'crsub', url, ctx.chromium.pages()[0]);
  const crPub = await openPage(ctx.chromium, 'crpub', url);

  // Firefox (simulcast) -> Chromium.
  const ff = await startPublisher(ctx, room, { simulcast: true, audio: true, participant: 'ffpub' });
  const ffVideo = ff.tracks.find((t) => t.kind === 'TRACK_KIND_VIDEO');
  if (!ffVideo || (ffVideo.rids || []).length !== 3) {
    throw new Error(`the Firefox publisher's video should have three simulcast layers, got ${JSON.stringify(ff.tracks)}`);
  }
  await startSubscriber(ctx, { sub: crSub, call: room.call }, ff.tracks.map((t) => t.track_id),
    { participant: 'crsub', label: 'Chromium subscriber' });
  const toChromium = await waitForMedia(ctx, { sub: crSub, subKey: 'chromium subscriber' });
  log(`Firefox -> Chromium: ${toChromium.frames} frames (${toChromium.videoCodec}), ${toChromium.audio} audio packets`);

  // Chromium -> Firefox.
  const cr = await startPublisher(ctx, { pub: crPub, call: room.call }, { participant: 'crpub' });
  await startSubscriber(ctx, room, cr.tracks.map((t) => t.track_id), { participant: 'ffsub', label: 'Firefox subscriber' });
  ctx.pages = { pub: crPub, sub: room.sub };
  const toFirefox = await waitForMedia(ctx, { subKey: 'firefox subscriber' });
  log(`Chromium -> Firefox: ${toFirefox.frames} frames (${toFirefox.videoCodec}), ${toFirefox.audio} audio packets`);
  return { toChromium, toFirefox };
}
