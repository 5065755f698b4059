// Opens a local HTML page in headless Chromium (Debian's `chromium`, driven by playwright-core over CDP; no
// browser download) and reports what a reader's browser would: the rendered DOM, a full-page screenshot, console
// messages of level error, uncaught page errors and every network request the page made. Used by
// tests/close_report.rs for the close report; the page must need no network, so any request but the page's own
// file:// URL is a failure for the caller to report.
//
//   node scripts/render_page.cjs PAGE.html OUT_DIR [--width 1280] [--clip-height H] [--scale S]
//
// Writes OUT_DIR/dom.html, OUT_DIR/screenshot.png and OUT_DIR/report.json
// ({"console_errors": [...], "page_errors": [...], "requests": [...], "failed_requests": [...]}).
// The browser is CSPBILL_CHROMIUM or /usr/bin/chromium, with a fresh profile folder removed afterwards.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { chromium } = require('playwright-core');

async function main() {
  const args = process.argv.slice(2);
  const opt = (name, dflt) => {
    const i = args.indexOf(name);
    return i >= 0 ? args[i + 1] : dflt;
  };
  const [page_path, out_dir] = args;
  if (!page_path || !out_dir) {
    console.error('usage: node scripts/render_page.cjs PAGE.html OUT_DIR [--width W] [--clip-height H] [--scale S]');
    process.exit(2);
  }
  fs.mkdirSync(out_dir, { recursive: true });
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'cspbill-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CSPBILL_CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
    viewport: { width: Number(opt('--width', '1280')), height: Number(opt('--clip-height', '900')) },
    deviceScaleFactor: Number(opt('--scale', '1')),
  });
  const report = { console_errors: [], page_errors: [], requests: [], failed_requests: [] };
  try {
    const page = context.pages()[0] || await context.newPage();
    page.on('console', (m) => { if (m.type() === 'error') report.console_errors.push(m.text()); });
    page.on('pageerror', (e) => report.page_errors.push(String(e)));
    page.on('request', (r) => report.requests.push(r.url()));
    page.on('requestfailed', (r) => report.failed_requests.push(r.url()));
    const url = 'file://' + path.resolve(page_path);
    await page.goto(url, { waitUntil: 'load' });
    fs.writeFileSync(path.join(out_dir, 'dom.html'), await page.content());
    const clip = opt('--clip-height', null);
    const shot = path.join(out_dir, 'screenshot.png');
    if (clip) {
      const width = Number(opt('--width', '1280'));
      await page.screenshot({ path: shot, clip: { x: 0, y: 0, width, height: Number(clip) } });
    } else {
      await page.screenshot({ path: shot, fullPage: true });
    }
  } finally {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
  fs.writeFileSync(path.join(out_dir, 'report.json'), JSON.stringify(report, null, 2));
}

main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
