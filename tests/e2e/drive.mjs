// Types commands into the Microsoft 365 Agents Playground in headless Chromium and checks the
// Adaptive Cards the bot answers with.
//
//   node drive.mjs --url http://127.0.0.1:56150 --steps steps.json --out DIR
//
// steps.json: [{"name": "help", "send": "help", "expect": ["product add", ...]}, ...]. For each
// step the driver types `send`, presses Enter, and waits for a new card whose text holds every
// `expect` string (case-sensitive). It writes DIR/NN-name.png (that card), DIR/conversation.png
// (the whole chat), DIR/summary.json (with each card's `layout` problems: words broken across
// lines, sideways overflow), and exits non-zero on the first step that fails.
// Debian's chromium only (CHROMIUM overrides the path); nothing is downloaded, and every request
// that would leave loopback is refused before it is sent.
import { chromium } from 'playwright-core';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { layoutProblems } from '../cardcheck/render/layout.mjs';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string', default: 'http://127.0.0.1:56150' },
    steps: { type: 'string' },
    out: { type: 'string', default: 'playground-artifacts' },
    'step-timeout': { type: 'string', default: '20000' },
  },
});
const steps = JSON.parse(readFileSync(opt.steps, 'utf8'));
const stepTimeout = Number(opt['step-timeout']);
mkdirSync(opt.out, { recursive: true });

const CARD = '.ac-adaptiveCard';
const summary = { url: opt.url, steps: [], warnings: [], log: '' };
const started = Date.now();
const elapsed = () => ((Date.now() - started) / 1000).toFixed(1);
const say = (text) => console.log(`[drive ${elapsed()}s] ${text}`);

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: [
    '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic',
  ],
});
let failure = null;
let page = null;
try {
  // Tall enough that the whole conversation fits in one screenshot without scrolling.
  page = await browser.newPage({ viewport: { width: 1280, height: 2400 } });
  // The Playground's web page asks a CDN for fonts: refuse at once instead of waiting it out.
  await page.route(/^(?!https?:\/\/(127\.0\.0\.1|localhost|\[::1\])[:/])[a-z]+:\/\//, (r) => r.abort());
  page.on('pageerror', (e) => summary.warnings.push(`page error: ${e.message}`));

  await page.goto(opt.url, { waitUntil: 'domcontentloaded', timeout: 20000 });
  const box = page.getByRole('textbox');
  await box.waitFor({ timeout: 20000 });
  // "Connected." in the log panel: the Playground reached the bot (conversationUpdate sent).
  await page.getByText('Connected.', { exact: true }).waitFor({ timeout: 20000 });
  say('Playground loaded and connected to the bot');

  for (const [index, step] of steps.entries()) {
    const t0 = Date.now();
    const before = await page.locator(CARD).count();
    await box.click();
    await page.keyboard.type(step.send);
    await page.keyboard.press('Enter');
    const found = await waitForCard(page, before, step.expect, stepTimeout);
    const record = { name: step.name, send: step.send, seconds: (Date.now() - t0) / 1000 };
    if (found.index < 0) {
      record.newCards = found.texts;
      summary.steps.push(record);
      throw new Error(
        `step ${step.name ?? index}: no card with ${JSON.stringify(step.expect)} `
        + `within ${stepTimeout} ms after typing ${JSON.stringify(step.send)}; new cards: `
        + JSON.stringify(found.texts),
      );
    }
    const card = page.locator(CARD).nth(found.index);
    record.card = found.texts[found.index - before];
    // As a reader sees it at the Playground's width: no word broken, nothing sideways.
    record.layout = await card.evaluate(layoutProblems);
    const shot = join(opt.out, `${String(index + 1).padStart(2, '0')}-${step.name}.png`);
    await card.screenshot({ path: shot });
    summary.steps.push(record);
    say(`${step.name}: card shown in ${record.seconds.toFixed(2)} s`);
  }
} catch (error) {
  failure = error;
} finally {
  if (page) {
    try {
      // Grow the page until the conversation's scrolling pane shows every message at once.
      const hidden = await page.evaluate(() => Math.max(0, ...[...document.querySelectorAll('*')]
        .map((e) => e.scrollHeight - e.clientHeight)
        .filter((d) => Number.isFinite(d))));
      const size = page.viewportSize();
      if (hidden > 0) {
        await page.setViewportSize({ width: size.width, height: Math.min(size.height + hidden, 12000) });
        await page.waitForTimeout(300);
      }
      await page.screenshot({ path: join(opt.out, 'conversation.png') });
      summary.log = await page.locator('text=Log Panel').locator('xpath=../..').innerText({ timeout: 2000 });
    } catch (error) {
      summary.warnings.push(`could not capture the page: ${error.message}`);
    }
  }
  summary.seconds = Number(elapsed());
  summary.ok = failure === null;
  if (failure) summary.error = String(failure.message || failure);
  writeFileSync(join(opt.out, 'summary.json'), JSON.stringify(summary, null, 2));
  await browser.close();
}
if (failure) {
  console.error(`[drive] FAILED: ${failure.message || failure}`);
  process.exit(1);
}
say(`all ${steps.length} steps passed`);

// Waits for a card after the first `before` ones whose text holds every expected string.
// Returns its index among all cards, or -1 with the texts of the new cards seen.
async function waitForCard(page, before, expect, timeout) {
  const deadline = Date.now() + timeout;
  let texts = [];
  for (;;) {
    texts = await page.locator(CARD).evaluateAll(
      // As a reader sees it: without the word joiners that keep names on one line.
      (cards, skip) => cards.slice(skip).map((c) => c.innerText.replace(/\u2060/g, '')), before,
    );
    const hit = texts.findIndex((t) => expect.every((e) => t.includes(e)));
    if (hit >= 0) return { index: before + hit, texts };
    if (Date.now() > deadline) return { index: -1, texts };
    await page.waitForTimeout(100);
  }
}
