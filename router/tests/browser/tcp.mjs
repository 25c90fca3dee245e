// run.mjs --scenario tcp.

import dgram from 'node:dgram';

import { log, sleep, collectStats, candidatesOf } from './harness.mjs';
import { startRoom, startPublisher, startSubscriber, waitForMedia } from './room.mjs';

// ---------------------------------------------------------------- ICE-TCP
// Chromium whose UDP is dropped (browser.rs runs this scenario in a network
// namespace with only `lo` and an nft rule dropping UDP) must connect to the
// router's passive TCP candidate (media.tcp_listen), which the router offers
// beside its UDP one, and the subscriber decode the video, receive the audio
// and open its data channel over it.

// Sends a datagram to a socket of our own on `ip`: if it arrives, UDP
// is not blocked and this scenario would test nothing.
async function udpReaches(ip) {
  const sock = dgram.createSocket('udp4');
  try {
    await new Promise((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(0, ip, resolve);
    });
    const got = new Promise((resolve) => sock.once('message', () => resolve(true)));
    const { port } = sock.address();
    for (let i = 0; i < 3; i += 1) sock.send('kaskade-e2e-udp-probe', port, ip);
    return await Promise.race([got, sleep(500).then(() => false)]);
  } finally {
    sock.close();
  }
}

// The selected pair of a page's getStats summary, which must be TCP on both ends.
function requireTcpPair(label, st) {
  const pair = st && st.pair;
  if (!pair || pair.localProtocol !== 'tcp' || pair.remoteProtocol !== 'tcp') {
    throw new Error(`the ${label}'s selected candidate pair should be TCP on both ends: ${JSON.stringify(pair)}`);
  }
  return `${pair.local} (${pair.localTcpType || '?'}) -> ${pair.remote}`;
}

// One value of a Prometheus text exposition (`name{labels}`), or null.
function metricValue(text, series) {
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line ? Number(line.slice(series.length + 1)) : null;
}

// `launch` and `ip`: another browser than Chromium (room.mjs) and the address
// the media sockets and the TCP listener bind to (Firefox: a veth address).
export async function tcpScenario(ctx, { launch = null, ip = '127.0.0.1' } = {}) {
  if (await udpReaches(ip)) {
    throw new Error(`UDP on ${ip} is not blocked: the tcp scenario must run in a network namespace ` +
      'that drops UDP (cargo test -p kaskade-router --test browser sets one up)');
  }
  log(`UDP on ${ip} is dropped, as it should be`);
  const room = await startRoom(ctx, { daemonArgs: ['--media-tcp-listen', `${ip}:0`], launch, mediaBind: ip });
  if (!ctx.ready.tcp) throw new Error(`the ready line names no TCP listener: ${JSON.stringify(ctx.ready)}`);
  log(`router ICE-TCP listener ${ctx.ready.tcp}`);
  const { session, tracks } = await startPublisher(ctx, room);
  const cands = candidatesOf(session.sdp_answer);
  if (!cands.some((c) => / tcp /i.test(c) && /tcptype passive/.test(c)) || !cands.some((c) => / udp /i.test(c))) {
    throw new Error(`the router's answer should offer a passive TCP and a UDP candidate: ${JSON.stringify(cands)}`);
  }
  await startSubscriber(ctx, room, tracks.map((t) => t.track_id));
  const media = await waitForMedia(ctx);
  const { p, s } = await collectStats(ctx.pages.pub, ctx.pages.sub);
  const pubPair = requireTcpPair('publisher', p);
  const subPair = requireTcpPair('subscriber', s);
  const metrics = await (await fetch(`http://${ctx.ready.metrics}/metrics`)).text();
  const active = metricValue(metrics, 'kaskade_tcp_connections{state="active"}');
  if (!(active >= 2)) {
    throw new Error(`kaskade_tcp_connections{state="active"} should count both pages' connections, is ${active}`);
  }
  return { media, pubPair, subPair, active };
}
