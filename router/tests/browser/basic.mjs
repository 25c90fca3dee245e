// run.mjs (--scenario basic, the default): the publisher page sends its fake
// camera and microphone to the router, the subscriber page receives both
// through the router plus a data channel.

import { ROOM_ID, sleep } from './harness.mjs';
import { startRoom, startPublisher, startSubscriber, waitForMedia } from './room.mjs';

export async function fullScenario(ctx) {
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
