// Loads URL in headless Chromium (Debian's /usr/bin/chromium) and prints the
// page's title once its WebSocket round trip has set it.
//
//   node load-page.js URL SPKI_SHA256_BASE64
//
// The relay's certificate is trusted by pinning its public key
// (--ignore-certificate-errors-spki-list), so the check is still a real
// certificate check, not "ignore all errors".
'use strict';
const { chromium } = require('playwright-core');

async function main() {
  const [url, spki] = process.argv.slice(2);
  if (!url || !spki) throw new Error('usage: load-page.js URL SPKI');
  const browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', `--ignore-certificate-errors-spki-list=${spki}`],
    timeout: 60000,
  });
  try {
    const page = await browser.newPage();
    const resp = await page.goto(url, { timeout: 30000 });
    console.log(`status=${resp.status()} protocol=${await resp.headerValue(':status') ? 'h2' : 'h1'}`);
    await page.waitForFunction(() => document.title.startsWith('ws'), null, { timeout: 30000 });
    console.log(`title=${await page.title()}`);
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  console.error(e && e.stack ? e.stack : String(e));
  process.exit(1);
});
