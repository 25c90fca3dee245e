// run.mjs --scenario whip: a page publishes its fake camera (three simulcast
// layers) and microphone with plain-fetch WHIP, another plays it with WHEP
// and must decode frames, a third plays it capped at the lowest layer
// (?layer=low) and must decode that layer's width (the browser: Chromium, or
// whatever h.launchBrowser starts); the pages come from another origin than the
// router's HTTP listener (CORS). Then a trickle ICE PATCH (204) and DELETE
// twice (200, 404) from each page. No gRPC: the router runs in dev mode
// (no API keys), where WHIP creates the room.

export async function whipScenario(ctx, h) {
  const { startDaemon, requireBin, startPageServer, launchBrowser, checkDaemon, log, sleep, diag, pushTail, roomId, mediaTimeoutMs, verbose } = h;
  ctx.daemon = startDaemon(requireBin());
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  if (typeof ready.http !== 'string') throw new Error(`no HTTP listener in ${JSON.stringify(ready)}`);
  log(`daemon ready: http=${ready.http}`);
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.context = await launchBrowser(ctx.userDataDir);
  const open = async (role, existing) => {
    diag.consoles[role] = diag.consoles[role] || [];
    const page = existing || (await ctx.context.newPage());
    page.on('console', (m) => {
      const line = `${m.type()}: ${m.text()}`;
      pushTail(diag.consoles[role], line, 500);
      if (verbose) console.log(`  (${role}) ${line}`);
    });
    page.on('pageerror', (e) => pushTail(diag.consoles[role], `pageerror: ${e.message}`, 500));
    await page.goto(`${pageSrv.url}whip.html`, { waitUntil: 'load', timeout: 15_000 });
    // Polled with evaluate: the same on Playwright's and Puppeteer's pages.
    const end = Date.now() + 10_000;
    while (!(await page.evaluate(() => !!window.whip))) {
      if (Date.now() > end) throw new Error(`${role}: window.whip did not appear within 10 s`);
      await sleep(100);
    }
    return page;
  };
  const pub = await open('pub', ctx.context.pages()[0]);
  const sub = await open('sub');
  const low = await open('low');
  ctx.pages = {};
  const base = `http://${ready.http}`;

  const published = await pub.evaluate((url) => window.whip.publish(url), `${base}/whip/${roomId}`);
  diag.sdp['WHIP offer'] = published.offer;
  diag.sdp['WHIP answer'] = published.answer;
  log(`WHIP: 201, Location ${published.location}`);
  // The publisher must be up before a viewer can pick it.
  const upStart = Date.now();
  for (;;) {
    checkDaemon(ctx);
    const s = await pub.evaluate(() => window.whip.stats());
    if (s && s.connectionState === 'connected' && s.sent > 50) break;
    if (Date.now() - upStart > 20_000) throw new Error(`the WHIP publisher did not connect within 20 s: ${JSON.stringify(s)}`);
    await sleep(200);
  }
  // One viewer lets the router choose the layer, one caps it at the lowest.
  const played = await sub.evaluate((url) => window.whip.play(url), `${base}/whep/${roomId}`);
  diag.sdp['WHEP offer'] = played.offer;
  diag.sdp['WHEP answer'] = played.answer;
  log(`WHEP: 201, Location ${played.location}`);
  await low.evaluate((url) => window.whip.play(url), `${base}/whep/${roomId}?layer=low`);

  const mediaStart = Date.now();
  const decodes = (s) => s && s.video.framesDecoded > 20 && s.video.width > 0 && s.audio.packets > 20;
  let s;
  let l;
  for (;;) {
    checkDaemon(ctx);
    [s, l] = await Promise.all([sub.evaluate(() => window.whip.stats()), low.evaluate(() => window.whip.stats())]);
    diag.lastStats = { at: Date.now(), viewer: s, lowViewer: l };
    if (decodes(s) && decodes(l)) break;
    if (Date.now() - mediaStart > mediaTimeoutMs) {
      throw new Error(`the WHEP viewers did not decode the WHIP publisher within ${mediaTimeoutMs / 1000} s: ${JSON.stringify(diag.lastStats)}`);
    }
    await sleep(250);
  }
  const mediaMs = Date.now() - mediaStart;
  log(`WHEP viewer decodes ${s.video.width}x${s.video.height}, ${s.video.framesDecoded} frames, ${s.audio.packets} audio packets, ${mediaMs} ms after its POST`);
  // The camera is 1280 wide: its lowest simulcast layer is a quarter of that.
  if (l.video.width > 400) throw new Error(`the layer=low viewer decodes ${l.video.width}px wide, not the lowest layer (320)`);
  log(`layer=low viewer decodes ${l.video.width}x${l.video.height}`);

  for (const [name, page] of [['viewer', sub], ['low viewer', low], ['publisher', pub]]) {
    const patch = await page.evaluate(() => window.whip.trickle());
    if (patch !== 204) throw new Error(`${name}: trickle ICE PATCH answered ${patch}, not 204`);
    const [first, second] = await page.evaluate(() => window.whip.leave());
    if (first !== 200 || second !== 404) throw new Error(`${name}: DELETE answered ${first} then ${second}, not 200 then 404`);
  }
  log("PATCH 204, DELETE 200 then 404 on every resource");
  return { mediaMs, width: s.video.width, height: s.video.height, frames: s.video.framesDecoded, lowWidth: l.video.width, lowHeight: l.video.height };
}
