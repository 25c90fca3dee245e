// run.mjs --scenario example.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import readline from 'node:readline';

import { HERE, ROOM_ID, diag, log, pushTail, startDaemon, requireBin } from './harness.mjs';

// ---------------------------------------------------------------- example backend
// docs/examples/node-backend, run as an integrator would: its page and
// kaskade.js are served; over its WebSocket a client gets the room, creates
// a session (a data-channel offer), is refused another's session, closes
// its own and is told so by the pushed events.

const EXAMPLE_DIR = path.resolve(HERE, '../../../docs/examples/node-backend');
const DATA_CHANNEL_OFFER = [
  'v=0', 'o=- 4611731400430051336 2 IN IP4 127.0.0.1', 's=-', 't=0 0',
  'a=group:BUNDLE 0', 'a=extmap-allow-mixed', 'a=msid-semantic: WMS',
  'm=application 9 UDP/DTLS/SCTP webrtc-datachannel', 'c=IN IP4 0.0.0.0',
  'a=candidate:1 1 udp 2113937151 127.0.0.1 50000 typ host',
  'a=ice-ufrag:smok', 'a=ice-pwd:smoketestsmoketestsmoket', 'a=ice-options:trickle',
  'a=fingerprint:sha-256 ' + Array.from({ length: 32 }, (_, i) => (i * 7 % 256).toString(16).padStart(2, '0').toUpperCase()).join(':'),
  'a=setup:actpass', 'a=mid:0', 'a=sctp-port:5000', 'a=max-message-size:262144', '',
].join('\r\n');

export async function exampleScenario(ctx) {
  const bin = requireBin();
  if (!existsSync(path.join(EXAMPLE_DIR, 'node_modules', 'ws'))) {
    throw new Error(`run \`npm ci\` in ${EXAMPLE_DIR} first`);
  }
  const { WebSocket } = await import(path.join(EXAMPLE_DIR, 'node_modules', 'ws', 'wrapper.mjs'));
  ctx.daemon = startDaemon(bin);
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  const backend = spawn(process.execPath, ['server.mjs'], {
    cwd: EXAMPLE_DIR,
    env: { ...process.env, KASKADE_CONTROL: ready.control, KASKADE_HTTP: ready.http, PORT: '0' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  ctx.backend = backend;
  diag.daemons['example backend'] = { stderr: [], exit: null };
  readline.createInterface({ input: backend.stderr }).on('line', (l) => pushTail(diag.daemons['example backend'].stderr, l));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('the example backend did not say where it listens within 15 s')), 15_000);
    backend.once('exit', (code) => reject(new Error(`the example backend exited (${code})`)));
    readline.createInterface({ input: backend.stdout }).on('line', (l) => {
      const m = l.match(/listening on (http:\/\/\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
  });
  log(`example backend at ${url}`);
  const pageText = await (await fetch(url)).text();
  if (!pageText.includes('/kaskade.js')) throw new Error('the example page does not load /kaskade.js');
  const js = await fetch(`${url}kaskade.js`);
  const jsText = await js.text();
  if (!js.ok || !jsText.includes('export class KaskadeSession')) {
    throw new Error(`GET ${url}kaskade.js: ${js.status} ${jsText.slice(0, 200)}`);
  }

  const ws = new WebSocket(`${url.replace('http', 'ws')}ws?room=${ROOM_ID}&name=smoke`);
  const inbox = [];
  const waiters = [];
  ws.on('message', (d) => {
    const msg = JSON.parse(String(d));
    inbox.push(msg);
    for (const w of waiters.splice(0)) w();
  });
  const next = async (pred, what) => {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0];
      if (Date.now() > deadline) throw new Error(`no ${what} from the example backend within 10 s; got ${JSON.stringify(inbox)}`);
      await new Promise((r) => { waiters.push(r); setTimeout(r, 200); });
    }
  };
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const { room } = await next((m) => m.room, 'room');
  if (room.roomId !== ROOM_ID) throw new Error(`the room pushed first should be ${ROOM_ID}: ${JSON.stringify(room)}`);
  ws.send(JSON.stringify({ id: 1, method: 'CreateSession', request: { sdpOffer: DATA_CHANNEL_OFFER } }));
  const created = await next((m) => m.id === 1, 'CreateSession answer');
  if (created.error) throw new Error(`CreateSession through the example backend: ${JSON.stringify(created.error)}`);
  const { sessionId, sdpAnswer } = created.response;
  ws.send(JSON.stringify({ id: 2, method: 'CloseSession', request: { sessionId: 'SE0000000000000001' } }));
  const refused = await next((m) => m.id === 2, 'refusal');
  if (!refused.error || refused.error.code !== 'PERMISSION_DENIED') {
    throw new Error(`closing another's session should be refused, got ${JSON.stringify(refused)}`);
  }
  ws.send(JSON.stringify({ id: 3, method: 'CloseSession', request: { sessionId } }));
  const closedResp = await next((m) => m.id === 3, 'CloseSession answer');
  if (closedResp.error) throw new Error(`CloseSession: ${JSON.stringify(closedResp.error)}`);
  const ev = await next((m) => m.event && m.event.sessionClosed, 'session_closed event');
  if (ev.event.sessionClosed.sessionId !== sessionId || ev.event.sessionClosed.participantId !== 'smoke') {
    throw new Error(`unexpected session_closed ${JSON.stringify(ev.event)}`);
  }
  ws.close();
  return { answerLines: sdpAnswer.split('\n').length, refused: refused.error.code };
}
