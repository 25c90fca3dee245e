// run.mjs --self-check: the browser and the protos only, no daemon.

import { PROTO_DIR, log, since, loadApi, startPageServer, launchBrowser, openPage, describeOffer } from './harness.mjs';

export async function selfCheck(ctx) {
  const { services } = loadApi();
  log(`protos loaded from ${PROTO_DIR}: ${services.join('; ')}`);
  const pageSrv = await startPageServer();
  ctx.pageServer = pageSrv.server;
  ctx.context = await launchBrowser(ctx.userDataDir);
  const pub = await openPage(ctx.context, 'pub', pageSrv.url, ctx.context.pages()[0]);
  const sub = await openPage(ctx.context, 'sub', pageSrv.url);
  const offer = await pub.evaluate(() => window.kaskade.publish());
  log(`publisher captured: ${offer.tracks.map((t) => `${t.kind} "${t.label}"`).join(', ')}; gathering ${offer.gathering}`);
  const pubCands = describeOffer('publisher offer', offer.sdp);
  const subOffer = await sub.evaluate(() => window.kaskade.prepareSubscriber());
  const subCands = describeOffer('subscriber offer', subOffer.sdp);
  for (const [label, cands] of [['publisher', pubCands], ['subscriber', subCands]]) {
    if (!cands.some((c) => c.includes(' 127.0.0.1 '))) {
      throw new Error(`the ${label} offer has no 127.0.0.1 host candidate`);
    }
  }
  console.log(`browser self-check: ok (${pubCands.length}+${subCands.length} candidates, 127.0.0.1 present, ${services.length} services) in ${since()}s`);
}
