#!/usr/bin/env node
// Render Adaptive Cards with the official `adaptivecards` JS renderer inside headless Chromium
// and screenshot each one. Nothing is served or fetched over the network: the renderer bundle is
// injected from node_modules into an about:blank page and every network request is aborted.
//
// Usage:
//   node render.mjs [--out DIR] [--host-config FILE] [--width PX] [--full-width PX]
//                   [--chromium PATH] [--report FILE] INPUT [INPUT ...]
//
// INPUT is a card JSON file or a directory (all *.json files in it, sorted, not recursive).
// The report is written to stdout (and to --report FILE if given) as
//   { "<file>": { "errors": [...], "warnings": [...], "screenshot": "<png path>|null" }, ... }
// where <file> is the path as given for file inputs, or the file name for directory inputs.
// Exit status: 0 when every card rendered without errors, 1 when some card has errors,
// 2 on a usage or infrastructure failure (message on stderr).

import fs from "node:fs";
import path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import { createRequire } from "node:module";
import { layoutProblems } from "./layout.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--font-render-hinting=none",
];

// Events of the JS renderer (AdaptiveCards.ValidationEvent) that only deserve a warning:
// Teams still renders the card the way it was authored.
const WARNING_EVENTS = new Set([
  "Hint",
  "Deprecated",
  "RequiredInputsShouldHaveLabel",
  "RequiredInputsShouldHaveErrorMessage",
]);

function usage(message) {
  if (message) process.stderr.write(`render.mjs: ${message}\n`);
  process.stderr.write(
    "usage: node render.mjs [--out DIR] [--host-config FILE] [--width PX] [--full-width PX] " +
      "[--chromium PATH] [--report FILE] INPUT [INPUT ...]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const opts = {
    out: path.resolve("card-screenshots"),
    hostConfig: path.join(HERE, "teams-light-hostconfig.json"),
    css: path.join(HERE, "teams.css"),
    width: 450, // Teams desktop: a regular card in a chat is at most ~450 px wide
    fullWidth: 800, // cards with "msteams": {"width": "Full"}
    chromium: process.env.CARDCHECK_CHROMIUM || "/usr/bin/chromium",
    report: null,
    widths: null, // --widths 400,800: every card at each width, whatever its msteams.width
    inputs: [],
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const next = () => {
      if (i + 1 >= argv.length) usage(`${a} needs a value`);
      return argv[++i];
    };
    if (a === "--out") opts.out = path.resolve(next());
    else if (a === "--host-config") opts.hostConfig = path.resolve(next());
    else if (a === "--width") opts.width = Number(next());
    else if (a === "--full-width") opts.fullWidth = Number(next());
    else if (a === "--chromium") opts.chromium = next();
    else if (a === "--report") opts.report = path.resolve(next());
    else if (a === "--widths") opts.widths = next().split(",").map(Number);
    else if (a === "-h" || a === "--help") usage();
    else if (a.startsWith("--")) usage(`unknown option ${a}`);
    else opts.inputs.push(a);
  }
  if (!opts.inputs.length) usage("no input files or directories");
  if (!(opts.width > 0) || !(opts.fullWidth > 0)) usage("--width/--full-width must be positive");
  if (opts.widths && !opts.widths.every((w) => w > 0)) usage("--widths must be positive numbers");
  return opts;
}

function collectInputs(inputs) {
  const files = []; // [{key, file}]
  for (const input of inputs) {
    let st;
    try {
      st = fs.statSync(input);
    } catch {
      usage(`no such file or directory: ${input}`);
    }
    if (st.isDirectory()) {
      for (const name of fs.readdirSync(input).filter((n) => n.endsWith(".json")).sort()) {
        files.push({ key: name, file: path.join(input, name) });
      }
    } else {
      files.push({ key: input, file: input });
    }
  }
  return files;
}

function screenshotName(key, used) {
  let stem = path.basename(key).replace(/\.json$/i, "").replace(/[^A-Za-z0-9._-]+/g, "_") || "card";
  let name = `${stem}.png`;
  for (let n = 2; used.has(name); n++) name = `${stem}-${n}.png`;
  used.add(name);
  return name;
}

// Teams' responsive layout (`targetWidth` on an element: VeryNarrow, Narrow, Standard, Wide,
// or atLeast:/atMost: one of them) is not in the JS renderer: the card is laid out for the
// width it is shown at the way Teams does, by leaving out the elements that do not target it.
// Width classes as assumed here: up to 320 px VeryNarrow, 414 Narrow, 600 Standard, else Wide.
const WIDTH_CLASSES = ["verynarrow", "narrow", "standard", "wide"];
function widthClass(px) {
  return px <= 320 ? 0 : px <= 414 ? 1 : px <= 600 ? 2 : 3;
}
function targets(spec, px) {
  if (typeof spec !== "string") return true;
  const m = spec.trim().toLowerCase().match(/^(atleast:|atmost:)?(verynarrow|narrow|standard|wide)$/);
  if (!m) return true; // an invalid value: the schema check reports it
  const want = WIDTH_CLASSES.indexOf(m[2]);
  const have = widthClass(px);
  if (m[1] === "atleast:") return have >= want;
  if (m[1] === "atmost:") return have <= want;
  return have === want;
}
function forWidth(node, px) {
  if (Array.isArray(node)) {
    return node.filter((n) => !(n && typeof n === "object" && !targets(n.targetWidth, px)))
      .map((n) => forWidth(n, px));
  }
  if (node && typeof node === "object") {
    const out = {};
    for (const [k, v] of Object.entries(node)) if (k !== "targetWidth") out[k] = forWidth(v, px);
    return out;
  }
  return node;
}

// Runs inside the page. Parses, validates and renders one card into #stage.
function renderInPage({ card, hostConfig, width, fullWidth, forcedWidth, warningEvents }) {
  const AC = window.AdaptiveCards;
  const errors = [];
  const warnings = [];
  const eventName = (e) => AC.ValidationEvent[e] ?? String(e);
  const phaseName = (p) => AC.ValidationPhase[p] ?? String(p);
  const where = (src) => {
    if (!src) return "";
    try {
      const type = typeof src.getJsonTypeName === "function" ? src.getJsonTypeName() : "";
      const id = src.id ? `#${src.id}` : "";
      return type || id ? ` [${type}${id}]` : "";
    } catch {
      return "";
    }
  };
  const record = (ev) => {
    const name = eventName(ev.event);
    const msg = `${phaseName(ev.phase)}/${name}${where(ev.source)}: ${ev.message}`;
    // Teams' chart elements are unknown to the JS renderer, which shows their fallback (what
    // clients without charts show); the schema check requires that fallback.
    const chart = name === "UnknownElementType" && /"Chart\.[A-Za-z.]+"/.test(ev.message);
    (warningEvents.includes(name) || chart ? warnings : errors).push(msg);
  };

  if (!window.__markdownInstalled) {
    AC.AdaptiveCard.onProcessMarkdown = (text, result) => {
      result.outputHtml = window.__cardcheckMarkdown(text);
      result.didProcess = true;
    };
    window.__markdownInstalled = true;
  }

  const stage = document.getElementById("stage");
  stage.innerHTML = "";
  const full = card && typeof card === "object" && card.msteams && card.msteams.width === "Full";
  const bubble = document.createElement("div");
  bubble.className = "teams-bubble";
  bubble.style.width = `${forcedWidth || (full ? fullWidth : width)}px`;
  stage.appendChild(bubble);

  if (!card || typeof card !== "object" || Array.isArray(card)) {
    errors.push("card JSON is not an object");
    return { errors, warnings };
  }
  if (card.type !== "AdaptiveCard") {
    errors.push(`top-level "type" must be "AdaptiveCard", got ${JSON.stringify(card.type)}`);
  }

  const ac = new AC.AdaptiveCard();
  ac.hostConfig = new AC.HostConfig(hostConfig);
  const ctx = new AC.SerializationContext(AC.Versions.v1_5);
  ac.parse(card, ctx);
  for (let i = 0; i < ctx.eventCount; i++) record(ctx.getEventAt(i));
  const results = ac.validateProperties();
  for (const ev of results.validationEvents) record(ev);

  let el;
  try {
    el = ac.render();
  } catch (e) {
    errors.push(`render() threw: ${e && e.stack ? e.stack : e}`);
  }
  if (!el) {
    errors.push("render() produced no element");
  } else {
    bubble.appendChild(el);
  }
  return { errors, warnings };
}

// A small Markdown subset, the one Teams supports in TextBlock: **bold**, _italic_/*italic*,
// ~~strike~~, `code`, [links](url), bulleted and numbered lists, paragraphs.
function installMarkdown() {
  const esc = (s) =>
    s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  const inline = (s) => {
    const codes = [];
    s = s.replace(/`([^`]+)`/g, (_, c) => {
      codes.push(c);
      return `\u0000${codes.length - 1}\u0000`;
    });
    s = esc(s);
    s = s.replace(/\[([^\]]+)\]\(([^)\s]+)\)/g, (_, t, u) => `<a class="ac-anchor" href="${u}">${t}</a>`);
    s = s.replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>");
    s = s.replace(/__([^_]+)__/g, "<strong>$1</strong>");
    s = s.replace(/(^|[^\w*])\*([^*\s][^*]*)\*/g, "$1<em>$2</em>");
    s = s.replace(/(^|[^\w])_([^_\s][^_]*)_(?!\w)/g, "$1<em>$2</em>");
    s = s.replace(/~~([^~]+)~~/g, "<del>$1</del>");
    s = s.replace(/\u0000(\d+)\u0000/g, (_, i) => `<code>${esc(codes[Number(i)])}</code>`);
    return s;
  };
  window.__cardcheckMarkdown = (text) => {
    const out = [];
    for (const block of String(text).replace(/\r\n?/g, "\n").split(/\n\s*\n/)) {
      const lines = block.split("\n");
      let para = [];
      let list = null; // {tag, items}
      const flushPara = () => {
        if (para.length) out.push(`<p>${inline(para.join(" "))}</p>`);
        para = [];
      };
      const flushList = () => {
        if (list) out.push(`<${list.tag}>${list.items.map((i) => `<li>${inline(i)}</li>`).join("")}</${list.tag}>`);
        list = null;
      };
      for (const line of lines) {
        const ul = line.match(/^\s*[-*+]\s+(.*)$/);
        const ol = line.match(/^\s*\d+\.\s+(.*)$/);
        const tag = ul ? "ul" : ol ? "ol" : null;
        if (tag) {
          flushPara();
          if (!list || list.tag !== tag) {
            flushList();
            list = { tag, items: [] };
          }
          list.items.push((ul || ol)[1]);
        } else {
          flushList();
          if (line.trim()) para.push(line.trim());
        }
      }
      flushPara();
      flushList();
    }
    return out.join("");
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const inputs = collectInputs(opts.inputs);
  const hostConfig = JSON.parse(fs.readFileSync(opts.hostConfig, "utf8"));
  const bundle = require.resolve("adaptivecards/dist/adaptivecards.min.js");
  const acCss = require.resolve("adaptivecards/dist/adaptivecards.css");
  const { chromium } = await import("playwright-core");

  if (!fs.existsSync(opts.chromium)) {
    process.stderr.write(`render.mjs: chromium not found at ${opts.chromium}\n`);
    process.exit(2);
  }
  fs.mkdirSync(opts.out, { recursive: true });

  const browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args: CHROMIUM_ARGS,
    timeout: 60_000,
  });
  const report = {};
  let anyErrors = false;
  try {
    const context = await browser.newContext({
      viewport: { width: Math.max(opts.width, opts.fullWidth) + 64, height: 800 },
      deviceScaleFactor: 1,
      offline: true,
      javaScriptEnabled: true,
      colorScheme: "light",
      locale: "en-GB",
    });
    // Nothing may leave the machine: abort every request (data: URLs are not routed).
    await context.route("**/*", (route) => route.abort("blockedbyclient"));
    const page = await context.newPage();

    let current = null; // {errors, warnings} of the card being rendered
    page.on("console", (msg) => {
      if (!current) return;
      const text = msg.text();
      if (msg.type() === "error") {
        // Offline renderer: images and other remote resources can never load; that is
        // the harness's limitation, not a defect of the card.
        if (/Failed to load resource|ERR_BLOCKED_BY_CLIENT|ERR_INTERNET_DISCONNECTED/.test(text)) {
          current.warnings.push(`resource not loaded (offline renderer): ${text}`);
        } else {
          current.errors.push(`console error: ${text}`);
        }
      } else if (msg.type() === "warning") {
        current.warnings.push(`console warning: ${text}`);
      }
    });
    page.on("pageerror", (err) => {
      if (current) current.errors.push(`page exception: ${err.message}`);
    });

    await page.setContent(
      '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>cardcheck</title></head>' +
        '<body><div id="stage"></div></body></html>',
    );
    await page.addStyleTag({ path: acCss });
    await page.addStyleTag({ path: opts.css });
    await page.addScriptTag({ path: bundle });
    await page.evaluate(installMarkdown);
    const ok = await page.evaluate(() => typeof window.AdaptiveCards?.AdaptiveCard === "function");
    if (!ok) throw new Error("the adaptivecards bundle did not define window.AdaptiveCards");

    const used = new Set();
    for (const { key, file } of inputs) {
      const entry = { errors: [], warnings: [], screenshot: null };
      report[key] = entry;
      let card;
      try {
        card = JSON.parse(fs.readFileSync(file, "utf8"));
      } catch (e) {
        entry.errors.push(`cannot read card JSON: ${e.message}`);
        anyErrors = true;
        continue;
      }
      const widths = opts.widths || [null];
      if (opts.widths) entry.widths = {};
      for (const forced of widths) {
        const at = forced ? { errors: [], warnings: [], layout: [], screenshot: null } : entry;
        current = at;
        try {
          const result = await page.evaluate(renderInPage, {
            card: forWidth(card, forced || (card.msteams?.width === "Full" ? opts.fullWidth : opts.width)),
            hostConfig,
            width: opts.width,
            fullWidth: opts.fullWidth,
            forcedWidth: forced,
            warningEvents: [...WARNING_EVENTS],
          });
          at.errors.push(...result.errors);
          at.warnings.push(...result.warnings);
          // Let images (data: URLs) decode and layout settle before the screenshot.
          await page.evaluate(async () => {
            await Promise.all(
              [...document.images].map((img) => (img.complete ? null : new Promise((r) => {
                img.onload = img.onerror = r;
              }))),
            );
            await document.fonts.ready;
            await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
          });
          if (forced) {
            const card = page.locator("#stage .ac-adaptiveCard");
            if (await card.count()) at.layout.push(...(await card.first().evaluate(layoutProblems)));
          }
          const stem = forced ? key.replace(/\.json$/i, "") + `-${forced}.json` : key;
          const shot = path.join(opts.out, screenshotName(stem, used));
          await page.locator("#stage").screenshot({ path: shot, animations: "disabled" });
          at.screenshot = shot;
          if (forced) {
            at.height = await page.evaluate(
              () => Math.round(document.querySelector("#stage").getBoundingClientRect().height));
            at.text = await page.evaluate(
              () => document.querySelector("#stage").innerText.replace(/\u2060/g, ""));
          }
        } catch (e) {
          at.errors.push(`renderer failure: ${e && e.message ? e.message : e}`);
        } finally {
          current = null;
        }
        if (forced) {
          entry.widths[forced] = at;
          entry.errors.push(...at.errors.map((e) => `at ${forced} px: ${e}`));
          if (!entry.screenshot) entry.screenshot = at.screenshot;
          for (const w of at.warnings) if (!entry.warnings.includes(w)) entry.warnings.push(w);
        }
      }
      if (entry.errors.length) anyErrors = true;
    }
    await context.close();
  } finally {
    await browser.close();
  }

  const text = JSON.stringify(report, null, 2);
  if (opts.report) fs.writeFileSync(opts.report, text + "\n");
  // Exit once the report is flushed: a pipe takes 64 KB at a time, and exiting earlier cuts it.
  process.stdout.write(text + "\n", () => process.exit(anyErrors ? 1 : 0));
}

main().catch((e) => {
  process.stderr.write(`render.mjs: ${e && e.stack ? e.stack : e}\n`);
  process.exit(2);
});
