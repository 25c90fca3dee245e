// run.mjs --scenario firefox: the basic scenario with Firefox pages. A
// Firefox page publishes its fake camera and microphone with kaskade.js
// through the gRPC signalling, a second Firefox page subscribes (data channel
// first, then the router's offer) and must decode video, receive audio and
// open its data channel. Runs in browser.rs's veth namespace (see
// firefox-whip.mjs).

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
