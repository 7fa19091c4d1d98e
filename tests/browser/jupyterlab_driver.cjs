// Drive a real JupyterLab in Debian's headless Chromium with playwright-core (from
// jupyter/node_modules, found through NODE_PATH): load the app, say so, wait for toasts
// carrying each expected text, take a screenshot and report every toast's text.
//
// node jupyterlab_driver.cjs LAB_URL SCREENSHOT_PNG EXPECTED_TEXT...
// stdout: one JSON object per line: {"event":"ready"}, then {"event":"done",...}.
'use strict';
const { chromium } = require('playwright-core');

const FLAGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync'
];

function say(event, fields = {}) {
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

async function main() {
  const [url, screenshot, ...expected] = process.argv.slice(2);
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: FLAGS
  });
  const errors = [];
  let page = null;
  try {
    page = await browser.newPage({ viewport: { width: 1280, height: 760 } });
    page.on('pageerror', error => errors.push(String(error)));
    page.on('console', message => {
      if (message.type() === 'error') {
        errors.push(message.text());
      }
    });
    await page.goto(url, { waitUntil: 'domcontentloaded', timeout: 60000 });
    // The launcher shows once the app is restored, which is when the extension's feed starts.
    await page.locator('.jp-Launcher').first().waitFor({ timeout: 60000 });
    say('ready');
    const messages = page.locator('.jp-toast-message');
    for (const text of expected) {
      await messages.filter({ hasText: text }).first().waitFor({ timeout: 30000 });
    }
    await page.waitForTimeout(700); // let toasts finish sliding in
    await page.screenshot({ path: screenshot });
    const toasts = await page.locator('.Toastify__toast').evaluateAll(nodes =>
      nodes.map(node => ({ className: node.className, text: node.innerText }))
    );
    say('done', { toasts, errors });
  } catch (error) {
    if (page !== null) {
      await page.screenshot({ path: `${screenshot}.failed.png` }).catch(() => undefined);
    }
    say('failed', { error: String(error), errors });
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main();
