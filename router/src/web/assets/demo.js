// The kaskade demo app: camera and microphone published with simulcast, a
// tile per remote participant with a layer picker and live statistics, the
// active speaker highlighted. Signalling goes to the demo endpoint of the
// router that serves this page (/demo/api, /demo/events); an integrator's
// page does the same through its own backend (docs/examples/).
//
// When the router has API keys, the page needs a room token granting publish
// and subscribe: /?room=NAME&token=JWT. The token is taken out of the
// address bar at once (history, bookmarks, screen shares) and sent only as
// `Authorization: Bearer` to this router; the page sends no Referer.
import { KaskadeSession, httpSignal } from '/kaskade.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const ID_RE = /^[A-Za-z0-9_.:-]{1,128}$/;

/** The room token, if the address carried one (then removed from it). */
const token = params.get('token');
if (token !== null) {
  params.delete('token');
  const rest = params.toString();
  history.replaceState(null, '', `${location.pathname}${rest ? `?${rest}` : ''}`);
}

/** The headers every call to the demo endpoint carries. */
function authHeaders() {
  return token ? { authorization: `Bearer ${token}` } : {};
}

let session = null;
let events = null;
/** sessionId -> {el, video, audio, name, stats, picker, videoTrackId} */
const tiles = new Map();

function status(text) {
  $('status').textContent = text;
}

/** The demo endpoint: one SessionService call as JSON, with the token if any. */
function demoSignal(room, participantId) {
  return httpSignal('/demo/api', {
    token,
    extend: (method, request) => (method === 'CreateSession' ? { ...request, roomId: room, participantId } : request),
  });
}

function tile(key, label) {
  let t = tiles.get(key);
  if (t) return t;
  const el = document.createElement('section');
  el.className = 'tile';
  el.dataset.key = key;
  const video = document.createElement('video');
  video.autoplay = true;
  video.playsInline = true;
  video.muted = true;
  const bar = document.createElement('div');
  bar.className = 'bar';
  const name = document.createElement('span');
  name.className = 'name';
  name.textContent = label;
  bar.append(name);
  const stats = document.createElement('div');
  stats.className = 'stats';
  el.append(video, bar, stats);
  t = { el, video, audio: null, name, stats, picker: null, videoTrackId: null, bar };
  tiles.set(key, t);
  $('tiles').append(el);
  return t;
}

function addPicker(t, trackId) {
  if (t.picker) t.picker.remove();
  const picker = document.createElement('select');
  picker.className = 'layer';
  picker.title = 'the most this tile receives (UpdateSubscription)';
  for (const v of ['auto', 'low', 'mid', 'high']) {
    const o = document.createElement('option');
    o.value = v;
    o.textContent = v;
    picker.append(o);
  }
  picker.addEventListener('change', async () => {
    try {
      await session.setLayer(trackId, picker.value);
    } catch (e) {
      status(`layer change failed: ${e.message}`);
    }
  });
  t.bar.append(picker);
  t.picker = picker;
}

function removeTile(key) {
  const t = tiles.get(key);
  if (!t) return;
  t.el.remove();
  tiles.delete(key);
}

function fmtStats(s) {
  if (!s) return '';
  const parts = [];
  if (s.width) parts.push(`${s.width}x${s.height}`);
  if (s.fps !== undefined) parts.push(`${Math.round(s.fps)} fps`);
  if (s.bitrate !== null && s.bitrate !== undefined) parts.push(`${Math.round(s.bitrate / 1000)} kbps`);
  if (s.layer !== null && s.layer !== undefined) parts.push(`layer ${s.layer < 0 ? '-' : s.layer}`);
  if (s.rtt !== null && s.rtt !== undefined) parts.push(`RTT ${Math.round(s.rtt * 1000)} ms`);
  return parts.join(' · ');
}

/** What the tiles show, for a glance from the console (and the browser test). */
const view = { tiles: [] };

async function refreshStats() {
  if (!session) return;
  const all = await session.stats();
  const rows = [];
  for (const [key, t] of tiles) {
    if (key === 'local') continue;
    const v = t.videoTrackId && all.get(t.videoTrackId);
    t.stats.textContent = fmtStats(v);
    rows.push({
      sessionId: key,
      participantId: t.name.textContent,
      videoTrackId: t.videoTrackId,
      width: v ? v.width : undefined,
      height: v ? v.height : undefined,
      framesDecoded: v ? v.framesDecoded : undefined,
      layer: v ? v.layer : undefined,
      preference: t.picker ? t.picker.value : undefined,
      audio: !!t.audio,
    });
  }
  view.tiles = rows;
}

/**
 * The room's events: server-sent events read with fetch, which (unlike
 * EventSource) can send the token. Resolves once the router watches the
 * room, with an object whose close() ends the stream.
 */
function openEvents(room) {
  const ctrl = new AbortController();
  return new Promise((resolve, reject) => {
    let watching = false;
    const onMessage = (text) => {
      const data = text.split('\n').filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, '')).join('\n');
      if (!data) return; // a keep-alive comment
      const ev = JSON.parse(data);
      if (ev.watching) {
        watching = true;
        resolve({ close: () => ctrl.abort() });
      } else if (session) {
        session.handleEvent(ev);
      }
    };
    (async () => {
      const resp = await fetch(`/demo/events?room=${encodeURIComponent(room)}`, {
        headers: authHeaders(), signal: ctrl.signal, cache: 'no-store',
      });
      if (!resp.ok) throw new Error(`cannot watch the room: HTTP ${resp.status}: ${(await resp.text()).trim()}`);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = '';
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value.replace(/\r\n?/g, '\n');
        for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
          onMessage(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
      throw new Error('the event stream ended');
    })().catch((e) => {
      if (e.name === 'AbortError') return;
      if (watching) status(`events: ${e.message}`);
      else reject(e);
    });
  });
}

async function join(room, name) {
  $('join').hidden = true;
  $('inroom').hidden = false;
  $('roomname').textContent = `room ${room} as ${name}`;
  const link = new URL(location.href);
  link.search = `?room=${encodeURIComponent(room)}`;
  $('share').href = link.href;
  history.replaceState(null, '', `?room=${encodeURIComponent(room)}&name=${encodeURIComponent(name)}`);

  let stream = null;
  status('asking for camera and microphone…');
  try {
    stream = await navigator.mediaDevices.getUserMedia({
      audio: true,
      video: { width: { ideal: 1280 }, height: { ideal: 720 } },
    });
  } catch (e) {
    status(`no camera/microphone (${e.name}): joining to watch only`);
  }
  const local = tile('local', `${name} (you)`);
  local.el.classList.add('local');
  if (stream) local.video.srcObject = stream;

  session = new KaskadeSession({ signal: demoSignal(room, name) });
  session.addEventListener('track', (e) => {
    const d = e.detail;
    const t = tile(d.sessionId, d.participantId || d.sessionId);
    if (d.kind === 'video') {
      t.video.srcObject = d.stream;
      t.videoTrackId = d.trackId;
      addPicker(t, d.trackId);
    } else {
      const a = document.createElement('audio');
      a.autoplay = true;
      a.srcObject = d.stream;
      t.el.append(a);
      t.audio = a;
    }
  });
  session.addEventListener('trackended', (e) => {
    const d = e.detail;
    const t = tiles.get(d.sessionId);
    if (!t) return;
    if (d.kind === 'audio' && t.audio) {
      t.audio.remove();
      t.audio = null;
    } else if (d.trackId === t.videoTrackId) {
      t.video.srcObject = null;
      t.videoTrackId = null;
      if (t.picker) t.picker.remove();
      t.picker = null;
    }
    if (!t.audio && !t.videoTrackId) removeTile(d.sessionId);
  });
  session.addEventListener('participantleft', (e) => removeTile(e.detail.sessionId));
  session.addEventListener('speakers', (e) => {
    const list = e.detail.speakers.map((s) => s.sessionId);
    for (const [key, t] of tiles) {
      const id = key === 'local' ? session.sessionId : key;
      t.el.classList.toggle('speaking', list.includes(id));
      t.el.classList.toggle('loudest', list[0] === id);
    }
  });
  session.addEventListener('connectionstatechange', (e) => status(`connection ${e.detail.state}`));
  session.addEventListener('error', (e) => status(`error: ${e.detail.error.message}`));

  status('joining…');
  events = await openEvents(room);
  await session.join(stream);
  const { room: snapshot } = await session.signal('GetRoom', { roomId: room });
  session.addRoom(snapshot);
  status(`in room ${room}`);
  setInterval(() => refreshStats().catch(() => {}), 1000);
}

async function leave() {
  if (events) events.close();
  if (session) await session.leave();
  location.href = location.pathname;
}

function randomName() {
  return `guest-${Math.floor(Math.random() * 1e4)}`;
}

$('join').addEventListener('submit', (e) => {
  e.preventDefault();
  const room = $('room').value.trim();
  const name = $('name').value.trim() || randomName();
  join(room, name).catch((err) => status(`cannot join: ${err.message}`));
});
$('leave').addEventListener('click', () => leave());
window.addEventListener('pagehide', () => {
  if (session) session.leave();
});

const room = params.get('room');
if (room && ID_RE.test(room)) {
  const name = params.get('name');
  join(room, name && ID_RE.test(name) ? name : randomName()).catch((err) => status(`cannot join: ${err.message}`));
}

window.kaskadeDemo = { view, tiles, get session() { return session; } };
