// Drives one headless Chromium for chainwarden's browser tests (internal/browsertest): reads one JSON command a
// line on stdin and answers each with one JSON line on stdout ({ok: true, ...} or {error: "...", text}).
//   {"op": "open", "url": "..."}                      load a page
//   {"op": "wait", "want": [re], "absent": [re], "click": [selector], "reload": bool, "timeoutMs": n}
//        until the page's visible text matches every `want` and none of `absent` (JavaScript regular expressions);
//        the `click` selectors (Playwright's) are clicked once after each load, `reload` reloads between looks
//   {"op": "screenshot", "path": "..."}                the whole page as PNG
//   {"op": "text"}                                     the page's visible text
// The browser closes when stdin does. Environment: CHROMIUM (the executable), PLAYWRIGHT_CORE (the package's
// directory), USER_DATA_DIR (a fresh profile directory), NO_SCRIPT=1 to run pages with JavaScript off.
'use strict';
const { chromium } = require(process.env.PLAYWRIGHT_CORE);
const readline = require('readline');

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function visibleText(page) {
  try {
    return await page.innerText('body', { timeout: 2000 });
  } catch (e) {
    return ''; // between pages (a click navigated): look again
  }
}

async function clickAll(page, selectors) {
  for (const sel of selectors || []) {
    const loc = page.locator(sel).first();
    try {
      if (await loc.count() > 0) await loc.click({ timeout: 2000 });
    } catch (e) {
      // not clickable yet: the next look tries again
    }
  }
}

async function wait(page, cmd) {
  const want = (cmd.want || []).map((s) => new RegExp(s));
  const absent = (cmd.absent || []).map((s) => new RegExp(s));
  const deadline = Date.now() + (cmd.timeoutMs || 30000);
  let text = '';
  let missing = [];
  for (let first = true; ; first = false) {
    if (cmd.reload && !first) {
      try {
        await page.reload({ waitUntil: 'load', timeout: 10000 });
      } catch (e) {
        // the server did not answer this time: look again
      }
    }
    if (cmd.reload || first) await clickAll(page, cmd.click);
    text = await visibleText(page);
    missing = want.filter((re) => !re.test(text)).map((re) => 'missing ' + re)
      .concat(absent.filter((re) => re.test(text)).map((re) => 'present ' + re));
    if (missing.length === 0) return { ok: true, text };
    if (Date.now() > deadline) return { error: 'timed out: ' + missing.join(', '), text };
    await sleep(cmd.reload ? 500 : 200);
  }
}

(async () => {
  const context = await chromium.launchPersistentContext(process.env.USER_DATA_DIR, {
    executablePath: process.env.CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1400, height: 900 },
    javaScriptEnabled: process.env.NO_SCRIPT !== '1',
  });
  const page = context.pages()[0] || await context.newPage();
  const answer = (o) => process.stdout.write(JSON.stringify(o) + '\n');
  answer({ ok: true }); // launched
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch (e) {
      answer({ error: 'bad command: ' + e.message });
      continue;
    }
    try {
      switch (cmd.op) {
        case 'open': {
          const resp = await page.goto(cmd.url, { waitUntil: 'load', timeout: cmd.timeoutMs || 30000 });
          answer({ ok: true, status: resp ? resp.status() : 0 });
          break;
        }
        case 'wait':
          answer(await wait(page, cmd));
          break;
        case 'screenshot':
          try {
            await page.evaluate(() => window.scrollTo(0, 0)); // a fixed header lands at the top, where it belongs
          } catch (e) {
            // JavaScript off: the page was not scrolled by a script either
          }
          await page.screenshot({ path: cmd.path, fullPage: true });
          answer({ ok: true });
          break;
        case 'text':
          answer({ ok: true, text: await visibleText(page) });
          break;
        default:
          answer({ error: 'unknown op ' + cmd.op });
      }
    } catch (e) {
      answer({ error: String(e && e.message ? e.message : e), text: await visibleText(page) });
    }
  }
  await context.close();
})().catch((e) => {
  process.stderr.write('browser driver: ' + (e && e.stack ? e.stack : e) + '\n');
  process.exit(1);
});
