// The two-page room of the basic, tcp, simulcast and cascade scenarios:
// the daemon, the browser and the room, a publisher page, a subscriber page
// and the wait for media to flow between them.

import { existsSync } from 'node:fs';

import grpc from '@grpc/grpc-js';

import {
  MEDIA_TIMEOUT_MS, POLL_MS, ROOM_ID, diag, log, sleep, loadApi, rpc, startDaemon, startPageServer,
  launchBrowser, openPage, collectStats, describeOffer, checkDaemon,
} from './harness.mjs';

export function progressLine(p, s) {
  const v = (s && s.inVideo) || {};
  const a = (s && s.inAudio) || {};
  const pv = (p && p.outVideo) || {};
  const pa = (p && p.outAudio) || {};
  return (
    `pub[${p && p.connectionState} sent v=${pv.packetsSent || 0}pkts/${pv.framesEncoded || 0}fr a=${pa.packetsSent || 0}pkts] ` +
    `sub[${s && s.connectionState} dc=${s && s.dataChannel} v=${v.packetsReceived || 0}pkts/${v.framesDecoded || 0}fr ` +
    `a=${a.packetsReceived || 0}pkts/${a.totalSamplesReceived || 0}smp]`
  );
}

// Starts the daemon, the browser with both pages and the room.
// `daemonArgs` follow the daemon's common arguments; `launch(ctx)` starts
// another browser than Chromium (a context with newPage(), pages(), close());
// `mediaBind` is the media sockets' address.
export async function startRoom(ctx, { daemonArgs = [], launch = null, mediaBind = '127.0.0.1' } = {}) {
  const bin = process.env.KASKADE_BIN;
  if (!bin) throw new Error('KASKADE_BIN is not set (path to the kaskade binary)');
  if (!existsSync(bin)) throw new Error(`KASKADE_BIN=${bin} does not exist (build it with cargo build -p kaskade-router)`);
  const { v1 } = loadApi();

  ctx.daemon = startDaemon(bin, { extraArgs: daemonArgs, mediaBind });
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  ctx.ready = ready;
  log(`daemon ready: control=${ready.control} metrics=${ready.metrics} media=${ready.media.join(',')}`);

  ctx.rooms = new v1.RoomService(ready.control, grpc.credentials.createInsecure());
  ctx.sessions = new v1.SessionService(ready.control, grpc.credentials.createInsecure());
  const call = (svc, method, req, opts) =>
    rpc(svc === 'RoomService' ? ctx.rooms : ctx.sessions, svc, method, req, opts);

  // Start the browser while nothing else is needed from it.
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.pageServerUrl = pageSrv.url;
  ctx.context = launch ? await launch(ctx) : await launchBrowser(ctx.userDataDir);
  const pub = await openPage(ctx.context, 'pub', pageSrv.url, ctx.context.pages()[0]);
  const sub = await openPage(ctx.context, 'sub', pageSrv.url);
  ctx.pages = { pub, sub };
  log(`pages open at ${pageSrv.url}`);

  await call('RoomService', 'CreateRoom', { room_id: ROOM_ID, max_sessions: 0 });
  return { pub, sub, call };
}

// Page A publishes: camera and microphone, or (simulcast) the camera alone
// as three layers. Returns the session, the tracks the router saw and what
// the page captured.
export async function startPublisher(ctx, { pub, call }, { simulcast = false, audio = false, e2eeKey = null, participant = 'pub' } = {}) {
  const pubOffer = await pub.evaluate((opts) => window.kaskade.publish(opts), { simulcast, audio, e2eeKey });
  log(`publisher captured: ${pubOffer.tracks.map((t) => `${t.kind} "${t.label}"${t.width ? ` ${t.width}x${t.height}@${t.frameRate}` : ''}`).join(', ')}`);
  if (simulcast) log(`publisher encodings: ${JSON.stringify(pubOffer.encodings)}`);
  describeOffer('publisher offer', pubOffer.sdp, { all: false });
  const pubSession = await call('SessionService', 'CreateSession', {
    room_id: ROOM_ID, participant_id: participant, sdp_offer: pubOffer.sdp, metadata: '',
  });
  describeOffer('router answer to publisher', pubSession.sdp_answer);
  await pub.evaluate((sdp) => window.kaskade.acceptAnswer(sdp), pubSession.sdp_answer);
  const tracks = pubSession.tracks || [];
  log(`publisher session ${pubSession.session_id}: tracks ${tracks.map((t) => `${t.track_id}(${t.kind}, mid ${t.mid}${t.rids && t.rids.length ? `, rids ${t.rids.join('/')}` : ''})`).join(', ') || '(none)'}`);
  return { session: pubSession, tracks, captured: pubOffer.tracks };
}

// Page B: a data channel only, then the router's offer with the tracks.
// Returns the session and when Subscribe was called (Date.now()).
// `label` names the subscriber in the log and the SDP dump, `frameLog` asks
// the page to hash the frames it shows (page.js watchFrames).
export async function startSubscriber(ctx, { sub, call }, trackIds,
  { participant = 'sub', label = 'subscriber', frameLog = false, bootstrap = 'datachannel', e2eeKey = null } = {}) {
  const subOffer = await sub.evaluate((opts) => window.kaskade.prepareSubscriber(opts), { frameLog, bootstrap, e2eeKey });
  describeOffer(`${label} offer`, subOffer.sdp, { all: false });
  const subSession = await call('SessionService', 'CreateSession', {
    room_id: ROOM_ID, participant_id: participant, sdp_offer: subOffer.sdp, metadata: '',
  });
  describeOffer(`router answer to ${label}`, subSession.sdp_answer);
  await sub.evaluate((sdp) => window.kaskade.acceptAnswer(sdp), subSession.sdp_answer);
  log(`${label} session ${subSession.session_id}`);

  const subscribeAt = Date.now();
  const subscribed = await call('SessionService', 'Subscribe', {
    session_id: subSession.session_id, track_ids: trackIds,
  });
  log(`subscriptions: ${(subscribed.subscriptions || []).map((s) => `${s.track_id}→mid ${s.mid}`).join(', ') || '(none)'}`);
  describeOffer(`router offer to ${label}`, subscribed.sdp_offer);
  const subAnswer = await sub.evaluate((sdp) => window.kaskade.answerOffer(sdp), subscribed.sdp_offer);
  diag.sdp[`${label} answer`] = subAnswer;
  await call('SessionService', 'SetAnswer', { session_id: subSession.session_id, sdp_answer: subAnswer });
  return { ...subSession, subscribeAt };
}

// Media must flow: video frames decoded and (unless audio is false) audio
// packets received, both above a floor and growing over two consecutive
// polls (so not a single burst); and (unless dataChannel is false) the data
// channel must have opened.
// `sub`/`subKey`: another subscriber page than ctx.pages.sub.
export async function waitForMedia(ctx, {
  audio: needAudio = true, dataChannel = true, line = progressLine, sub = ctx.pages.sub, subKey,
} = {}) {
  const { pub } = ctx.pages;
  const mediaStart = Date.now();
  const deadline = mediaStart + MEDIA_TIMEOUT_MS;
  let prev = null;
  let growing = 0; // consecutive polls in which the counters grew
  let lastProgress = 0;
  for (;;) {
    checkDaemon(ctx);
    const { p, s } = await collectStats(pub, sub, subKey);
    const frames = (s && s.inVideo && s.inVideo.framesDecoded) || 0;
    const audio = (s && s.inAudio && s.inAudio.packetsReceived) || 0;
    const audioOk = !needAudio || audio > 10;
    const dcOpen = !dataChannel || !!(s && s.dataChannelOpened);
    if (Date.now() - lastProgress >= 3000) {
      log(line(p, s));
      lastProgress = Date.now();
    }
    growing = prev && frames > prev.frames && (!needAudio || audio > prev.audio) ? growing + 1 : 0;
    if (dcOpen && frames > 10 && audioOk && growing >= 2) {
      log(line(p, s));
      return {
        frames,
        audio,
        mediaSecs: ((Date.now() - mediaStart) / 1000).toFixed(1),
        pair: s.pair,
        srtpCipher: s.transport && s.transport.srtpCipher,
        dtlsCipher: s.transport && s.transport.dtlsCipher,
        videoCodec: s.inVideo.codec,
        audioCodec: s.inAudio && s.inAudio.codec,
      };
    }
    if (Date.now() > deadline) {
      const missing = [];
      if (!dcOpen) missing.push(`the subscriber's data channel never opened (state ${s && s.dataChannel})`);
      if (frames <= 10) missing.push(`video framesDecoded=${frames} (need > 10)`);
      else if (prev && frames <= prev.frames) missing.push(`video framesDecoded stopped growing at ${frames}`);
      if (needAudio) {
        if (audio <= 10) missing.push(`audio packetsReceived=${audio} (need > 10)`);
        else if (prev && audio <= prev.audio) missing.push(`audio packetsReceived stopped growing at ${audio}`);
      }
      throw new Error(`media did not flow within ${MEDIA_TIMEOUT_MS / 1000} s: ${missing.join('; ')}`);
    }
    prev = { frames, audio };
    await sleep(POLL_MS);
  }
}
