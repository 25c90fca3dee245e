// run.mjs --scenario cascade.

import { execFile } from 'node:child_process';
import dgram from 'node:dgram';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import grpc from '@grpc/grpc-js';

import {
  ROOM_ID, diag, log, sleep, loadApi, rpc, startDaemon, startPageServer, launchBrowser, openPage,
  checkDaemon, requireBin,
} from './harness.mjs';
import { startPublisher, startSubscriber, waitForMedia } from './room.mjs';

// ---------------------------------------------------------------- cascade
// Two routers on loopback, A (node fra, region eu-de-fra) and B (node ams,
// region eu-nl-ams), linked over QUIC with mutual TLS (certificates from
// `kaskade cert dev-cluster`). Page A publishes camera and microphone on A;
// the room is linked to B; page B subscribes on B to the remote tracks and
// must decode the video and receive the audio. Then (unless
// KASKADE_E2E_COMPARE=0) page C subscribes on A itself, and the frames both
// subscribers show are matched by their pixels to compare the two paths.

const LINK_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_LINK_S || 15);
const REMOTE_TRACKS_TIMEOUT_MS = 1000 * Number(process.env.KASKADE_E2E_REMOTE_TRACKS_S || 15);
const COMPARE = process.env.KASKADE_E2E_COMPARE !== '0';
const COMPARE_MS = 4000; // how long both subscribers' frames are logged
const CASCADE_NODES = {
  A: { id: 'fra', region: 'eu-de-fra' },
  B: { id: 'ams', region: 'eu-nl-ams' },
};

// A UDP port that was free a moment ago (the QUIC listeners need theirs up
// front: each router is told its peer's address).
function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = dgram.createSocket('udp4');
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

function runTool(bin, args, timeoutMs = 20_000) {
  log(`running ${bin} ${args.join(' ')}`);
  return new Promise((resolve, reject) => {
    execFile(bin, args, { timeout: timeoutMs }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`${path.basename(bin)} ${args.join(' ')} failed (${err.code ?? err.signal}): ${String(stderr).trim() || err.message}`));
      } else {
        resolve({ stdout: String(stdout), stderr: String(stderr) });
      }
    });
  });
}
// gRPC clients of one router and a `call(service, method, request, opts)`
// that logs with the router's name.
function routerApi(ctx, v1, name, ready) {
  const addr = ready.control;
  const clients = {
    RoomService: new v1.RoomService(addr, grpc.credentials.createInsecure()),
    SessionService: new v1.SessionService(addr, grpc.credentials.createInsecure()),
    CascadeService: new v1.CascadeService(addr, grpc.credentials.createInsecure()),
  };
  (ctx.clients || (ctx.clients = [])).push(...Object.values(clients));
  const call = (svc, method, req, opts) => rpc(clients[svc], `${name} ${svc}`, method, req, opts);
  return { clients, call };
}

const fmtRouters = (refs) => (refs || []).map((r) => `${r.node_id}(${r.region})`).join(', ') || '(none)';
const fmtTracks = (tracks) =>
  (tracks || []).map((t) => `${t.track_id}(${t.kind}${t.origin_node_id ? ` from ${t.origin_node_id}` : ''})`).join(', ') || '(none)';
function fmtLink(l) {
  if (!l) return '(none)';
  return `${l.peer && l.peer.node_id} up=${l.up} rooms=[${(l.rooms || []).join(',')}] rtt=${l.rtt_us}us ` +
    `sent=${l.datagrams_sent}dg/${l.bytes_sent}B received=${l.datagrams_received}dg/${l.bytes_received}B ` +
    `dropped=${l.datagrams_dropped} nacked=${l.nacked} retransmitted=${l.retransmitted} lost=${l.lost} ` +
    `tracks sent=${l.tracks_sent} received=${l.tracks_received} reconnects=${l.reconnects}`;
}

// Polls GetRoom on B until it lists a remote video and audio track from A.
async function waitForRemoteTracks(ctx, callB, origin) {
  const deadline = Date.now() + REMOTE_TRACKS_TIMEOUT_MS;
  const started = Date.now();
  let room = null;
  for (;;) {
    checkDaemon(ctx);
    room = (await callB('RoomService', 'GetRoom', { room_id: ROOM_ID }, { quiet: true })).room;
    const remote = ((room && room.tracks) || []).filter((t) => t.origin_node_id === origin);
    const kinds = remote.map((t) => t.kind);
    if (kinds.includes('TRACK_KIND_VIDEO') && kinds.includes('TRACK_KIND_AUDIO')) {
      log(`B lists the remote tracks after ${Date.now() - started} ms: ${fmtTracks(remote)}`);
      return { remote, room };
    }
    if (Date.now() > deadline) {
      throw new Error(`GetRoom on B did not list a remote video and audio track from ${origin} within ` +
        `${REMOTE_TRACKS_TIMEOUT_MS / 1000} s; it lists tracks ${fmtTracks(room && room.tracks)}, ` +
        `reached ${fmtRouters(room && room.reached)}, linked ${fmtRouters(room && room.linked)}`);
    }
    await sleep(100);
  }
}

const median = (xs) => {
  if (!xs.length) return null;
  const v = xs.slice().sort((a, b) => a - b);
  const m = Math.floor(v.length / 2);
  return v.length % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
};

// Frames decoded by both subscribers, matched by their luma hash (hashes
// seen more than once on either side are left out): B's times minus A's,
// when the page got the frame and (if Chromium tells) when its last packet
// arrived.
function compareFrames(logA, logB) {
  const once = (log) => {
    const count = new Map();
    for (const f of log) count.set(f.hash, (count.get(f.hash) || 0) + 1);
    return new Map(log.filter((f) => count.get(f.hash) === 1).map((f) => [f.hash, f]));
  };
  const a = once(logA);
  const b = once(logB);
  const got = [];
  const received = [];
  for (const [hash, fb] of b) {
    const fa = a.get(hash);
    if (!fa) continue;
    got.push(fb.got - fa.got);
    if (fa.received !== null && fb.received !== null) received.push(fb.received - fa.received);
  }
  const r1 = (x) => (x === null ? null : Math.round(x * 10) / 10);
  return {
    matched: got.length,
    framesA: logA.length,
    framesB: logB.length,
    gotMedian: r1(median(got)),
    gotMin: got.length ? r1(Math.min(...got)) : null,
    gotMax: got.length ? r1(Math.max(...got)) : null,
    receivedMedian: r1(median(received)),
  };
}

export async function cascadeScenario(ctx) {
  const bin = requireBin();
  const { v1 } = loadApi();
  if (!v1.CascadeService) throw new Error('kaskade.v1.CascadeService not found in the protos');

  // Certificates and the two routers.
  ctx.certDir = mkdtempSync(path.join(os.tmpdir(), 'kaskade-e2e-certs-'));
  const { A: nodeA, B: nodeB } = CASCADE_NODES;
  await runTool(bin, ['cert', 'dev-cluster', '--out', ctx.certDir,
    '--node', `${nodeA.id}:${nodeA.region}`, '--node', `${nodeB.id}:${nodeB.region}`]);
  const portA = await freeUdpPort();
  let portB = await freeUdpPort();
  while (portB === portA) portB = await freeUdpPort();
  const nodeArgs = (node, port, peer, peerPort) => [
    '--node-id', node.id,
    '--region', node.region,
    '--cascade-listen', `127.0.0.1:${port}`,
    '--cascade-ca', path.join(ctx.certDir, 'ca.pem'),
    '--cascade-cert', path.join(ctx.certDir, `${node.id}.pem`),
    '--cascade-key', path.join(ctx.certDir, `${node.id}.key`),
    '--peer', `${peer.id}=127.0.0.1:${peerPort}`,
  ];
  const daemonA = startDaemon(bin, { label: `router A (${nodeA.id})`, extraArgs: nodeArgs(nodeA, portA, nodeB, portB) });
  const daemonB = startDaemon(bin, { label: `router B (${nodeB.id})`, extraArgs: nodeArgs(nodeB, portB, nodeA, portA) });
  ctx.daemons = [daemonA, daemonB];
  const [readyA, readyB] = await Promise.all([daemonA.ready, daemonB.ready]);
  for (const [name, ready, port] of [['A', readyA, portA], ['B', readyB, portB]]) {
    log(`router ${name} ready: control=${ready.control} media=${ready.media.join(',')} cascade=${ready.cascade}`);
    if (ready.cascade !== `127.0.0.1:${port}`) {
      throw new Error(`router ${name}'s KASKADE_READY line should say "cascade":"127.0.0.1:${port}", it says ${JSON.stringify(ready.cascade)}`);
    }
  }
  const { call: callA } = routerApi(ctx, v1, 'A', readyA);
  const { call: callB } = routerApi(ctx, v1, 'B', readyB);
  // On a failure: what both routers say about the room and the link.
  ctx.failureInfo = async () => {
    for (const [name, call] of [['A', callA], ['B', callB]]) {
      try {
        const r = (await call('RoomService', 'GetRoom', { room_id: ROOM_ID }, { quiet: true, timeoutMs: 3000 })).room;
        diag.extra.push(`router ${name} GetRoom: tracks ${fmtTracks(r.tracks)}; sessions ` +
          `${(r.sessions || []).map((x) => `${x.participant_id}(${x.session_id}, connected=${x.connected})`).join(', ') || '(none)'}; ` +
          `reached ${fmtRouters(r.reached)}; linked ${fmtRouters(r.linked)}`);
      } catch (e) {
        diag.extra.push(`router ${name} GetRoom: ${e.message}`);
      }
      try {
        const l = await call('CascadeService', 'ListLinks', {}, { quiet: true, timeoutMs: 3000 });
        diag.extra.push(`router ${name} ListLinks: ${(l.links || []).map(fmtLink).join(' | ') || '(no links)'}`);
      } catch (e) {
        diag.extra.push(`router ${name} ListLinks: ${e.message}`);
      }
    }
  };

  // The browser: the publisher, the subscriber on B and (to compare) one on A.
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.context = await launchBrowser(ctx.userDataDir);
  const pub = await openPage(ctx.context, 'pub', pageSrv.url, ctx.context.pages()[0]);
  const sub = await openPage(ctx.context, 'sub', pageSrv.url);
  ctx.pages = { pub, sub };
  if (COMPARE) {
    diag.consoles.subA = [];
    ctx.pages.subA = await openPage(ctx.context, 'subA', pageSrv.url);
  }
  log(`pages open at ${pageSrv.url}`);

  // The room on A, linked to B.
  await callA('RoomService', 'CreateRoom', { room_id: ROOM_ID, max_sessions: 0, allowed_regions: ['eu-'] });
  const linked = await callA('CascadeService', 'LinkRoom', { room_id: ROOM_ID, peer_node_id: nodeB.id }, { timeoutMs: LINK_TIMEOUT_MS });
  log(`A linked the room to ${fmtRouters([linked.peer])}`);
  if (!linked.peer || linked.peer.node_id !== nodeB.id || linked.peer.region !== nodeB.region) {
    throw new Error(`LinkRoom on A should answer with peer ${nodeB.id}(${nodeB.region}), got ${JSON.stringify(linked.peer)}`);
  }

  // Page A publishes on A; B must see its tracks as remote tracks.
  const { tracks } = await startPublisher(ctx, { pub, call: callA });
  const kinds = tracks.map((t) => t.kind);
  if (!kinds.includes('TRACK_KIND_VIDEO') || !kinds.includes('TRACK_KIND_AUDIO')) {
    throw new Error(`CreateSession for the publisher on A should list one audio and one video track, got ${JSON.stringify(tracks)}`);
  }
  const { remote } = await waitForRemoteTracks(ctx, callB, nodeA.id);

  // Page B subscribes on B to the remote tracks.
  const subB = await startSubscriber(ctx, { sub, call: callB }, remote.map((t) => t.track_id),
    { participant: 'sub-b', label: 'subscriber on B', frameLog: true });
  const media = await waitForMedia(ctx);
  const framesB = await sub.evaluate(() => window.kaskade.frames(Infinity));
  const firstFrameB = framesB.firstFrameAt === null ? null : framesB.firstFrameAt - subB.subscribeAt;
  log(`B decodes ${media.videoCodec} and receives ${media.audioCodec}; first frame decoded ${firstFrameB ?? '?'} ms after Subscribe on B`);

  // The routers' view: B reached by the room's media from A, the link up and carrying datagrams.
  const roomB = (await callB('RoomService', 'GetRoom', { room_id: ROOM_ID })).room;
  log(`B: reached ${fmtRouters(roomB.reached)}; linked ${fmtRouters(roomB.linked)}`);
  if (!(roomB.reached || []).some((r) => r.node_id === nodeA.id)) {
    throw new Error(`GetRoom on B should list ${nodeA.id} in reached, it lists ${fmtRouters(roomB.reached)}`);
  }
  const linksA = (await callA('CascadeService', 'ListLinks', {})).links || [];
  const linkA = linksA.find((l) => l.peer && l.peer.node_id === nodeB.id);
  log(`A's link to B: ${fmtLink(linkA)}`);
  if (!linkA || !linkA.up || !(Number(linkA.datagrams_sent) > 0)) {
    throw new Error(`ListLinks on A should show the link to ${nodeB.id} up with datagrams_sent > 0, it shows ${linksA.map(fmtLink).join(' | ') || '(no links)'}`);
  }

  // Optional: a subscriber on A itself; the same frames on both, B minus A.
  let compare = null;
  let firstFrameA = null;
  if (COMPARE) {
    const subA = await startSubscriber(ctx, { sub: ctx.pages.subA, call: callA }, tracks.map((t) => t.track_id),
      { participant: 'sub-a', label: 'subscriber on A', frameLog: true });
    await waitForMedia(ctx, { sub: ctx.pages.subA, subKey: 'subscriber on A' });
    const fa = await ctx.pages.subA.evaluate(() => window.kaskade.frames(Infinity));
    firstFrameA = fa.firstFrameAt === null ? null : fa.firstFrameAt - subA.subscribeAt;
    log(`subscriber on A: first frame decoded ${firstFrameA ?? '?'} ms after Subscribe on A; logging frames for ${COMPARE_MS / 1000} s`);
    const from = Date.now() + 500; // after A's first keyframe both decode the same bitstream
    await sleep(COMPARE_MS);
    checkDaemon(ctx);
    const [logA, logB] = await Promise.all([
      ctx.pages.subA.evaluate((t) => window.kaskade.frames(t).log, from),
      sub.evaluate((t) => window.kaskade.frames(t).log, from),
    ]);
    compare = compareFrames(logA, logB);
    log(`frames matched by their pixels: ${compare.matched} (of ${compare.framesA} on A, ${compare.framesB} on B); ` +
      `B − A decoded frame in the page: median ${compare.gotMedian ?? '?'} ms (min ${compare.gotMin ?? '?'}, max ${compare.gotMax ?? '?'}); ` +
      `last packet received: median ${compare.receivedMedian ?? '(not reported)'} ms`);
  }

  // The link still up, and counting.
  const linksAfter = (await callA('CascadeService', 'ListLinks', {})).links || [];
  const linkAfter = linksAfter.find((l) => l.peer && l.peer.node_id === nodeB.id);
  const linksB = (await callB('CascadeService', 'ListLinks', {})).links || [];
  log(`A's link to B now: ${fmtLink(linkAfter)}`);
  log(`B's link to A now: ${fmtLink(linksB.find((l) => l.peer && l.peer.node_id === nodeA.id))}`);
  return { media, firstFrameB, firstFrameA, compare, link: linkAfter || linkA };
}
