// run.mjs --scenario demo-tls: the demo app in public. The router has API
// keys and serves https (http.tls_cert/http.tls_key from the Rust test, a
// test CA Chromium is told to overlook with --ignore-certificate-errors);
// two pages open /?room=NAME&token=JWT&name=..., which must take the token
// out of the address bar, join with it (demo signalling and its event
// stream, Authorization: Bearer) and decode each other's camera; a third
// page with a token for another room must be refused (403) and say so.
//
// Environment (set by router/tests/browser.rs): KASKADE_API_KEYS (passed on
// to the daemon), KASKADE_TEST_HTTP_CERT, KASKADE_TEST_HTTP_KEY,
// KASKADE_TEST_DEMO_TOKEN (for room KASKADE_TEST_DEMO_ROOM, publish and
// subscribe), KASKADE_TEST_OTHER_TOKEN (for another room).

export async function demoTlsScenario(ctx, h) {
  const { startDaemon, requireBin, launchBrowser, checkDaemon, log, sleep, diag, pushTail, mediaTimeoutMs, verbose } = h;
  const env = (name) => {
    const v = process.env[name];
    if (!v) throw new Error(`${name} is not set: run this scenario through router/tests/browser.rs`);
    return v;
  };
  const room = env('KASKADE_TEST_DEMO_ROOM');
  const token = env('KASKADE_TEST_DEMO_TOKEN');
  const other = env('KASKADE_TEST_OTHER_TOKEN');
  env('KASKADE_API_KEYS');
  ctx.daemon = startDaemon(requireBin(), {
    extraArgs: [
      '--http-tls-cert', env('KASKADE_TEST_HTTP_CERT'), '--http-tls-key', env('KASKADE_TEST_HTTP_KEY'),
      // Open sessions need not hold up the stop at the end.
      '--shutdown-grace-period', '0s',
    ],
  });
  ctx.daemons = [ctx.daemon];
  const ready = await ctx.daemon.ready;
  if (typeof ready.http_url !== 'string' || !ready.http_url.startsWith('https://')) {
    throw new Error(`the ready line should give an https:// http_url, it is ${JSON.stringify(ready)}`);
  }
  log(`daemon ready: ${ready.http_url}`);
  ctx.context = await launchBrowser(ctx.userDataDir, ['--ignore-certificate-errors']);
  const open = async (name, tok, existing) => {
    diag.consoles[name] = [];
    const page = existing || (await ctx.context.newPage());
    page.on('console', (m) => {
      const line = `${m.type()}: ${m.text()}`;
      pushTail(diag.consoles[name], line, 500);
      if (verbose) console.log(`  (${name}) ${line}`);
    });
    page.on('pageerror', (e) => pushTail(diag.consoles[name], `pageerror: ${e.message}`, 500));
    await page.goto(`${ready.http_url}/?room=${room}&token=${tok}&name=${name}`, { waitUntil: 'load', timeout: 15_000 });
    return page;
  };
  const alice = await open('alice', token, ctx.context.pages()[0]);
  const bob = await open('bob', token);
  const mallory = await open('mallory', other);
  ctx.pages = { alice, bob, mallory };
  const status = async (p) => p.evaluate(() => document.getElementById('status').textContent);
  const tiles = async (p) => p.evaluate(() => (window.kaskadeDemo ? window.kaskadeDemo.view.tiles : []));
  ctx.failureInfo = async () => {
    for (const [n, p] of Object.entries(ctx.pages)) {
      diag.extra.push(`${n}: ${await p.evaluate(() => location.href).catch(() => '?')} status "${await status(p).catch(() => '?')}", tiles ${JSON.stringify(await tiles(p).catch(() => null))}`);
    }
  };
  for (const [n, p] of [['alice', alice], ['bob', bob]]) {
    const href = await p.evaluate(() => location.href);
    if (href.includes('token')) throw new Error(`${n}'s address bar still shows the token: ${href}`);
    if (!(await p.evaluate(() => window.isSecureContext))) throw new Error(`${n}'s page is not a secure context`);
  }
  log('the token is out of the address bar');

  const start = Date.now();
  const decodes = (ts, who) => ts.find((t) => t.participantId === who && t.width > 0 && t.framesDecoded > 10);
  let a;
  let b;
  for (;;) {
    checkDaemon(ctx);
    [a, b] = await Promise.all([tiles(alice), tiles(bob)]);
    if (decodes(a, 'bob') && decodes(b, 'alice')) break;
    if (Date.now() - start > mediaTimeoutMs) {
      throw new Error(`the https demo pages did not decode each other within ${mediaTimeoutMs / 1000} s: alice ${JSON.stringify(a)} ("${await status(alice)}"), bob ${JSON.stringify(b)} ("${await status(bob)}")`);
    }
    await sleep(250);
  }
  const mediaMs = Date.now() - start;
  const sa = decodes(a, 'bob');
  log(`both pages decode each other over https with a token, ${mediaMs} ms after opening: alice sees bob ${sa.width}x${sa.height}`);

  let refused = await status(mallory);
  const refusedBy = Date.now() + 10_000;
  while (!/HTTP_403|another room/.test(refused)) {
    if (Date.now() > refusedBy) throw new Error(`the page with another room's token was not refused: status "${refused}"`);
    await sleep(200);
    refused = await status(mallory);
  }
  log(`another room's token: "${refused}"`);
  return { mediaMs, width: sa.width, height: sa.height, refused };
}
