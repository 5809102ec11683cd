// Shared by render.mjs (the card harness) and tests/e2e/drive.mjs (the Playground drive).
// Runs inside the page after a render: what a reader would see as broken. A word (a run of
// non-space characters inside one text node) whose DOM range has line boxes on more than one
// line is broken across lines; an element reaching past the card's right edge, or whose
// content is wider than its box (clipped or scrolling), overflows sideways. A button whose
// title does not fit (the renderer cuts it with an ellipsis: its title element, or the button,
// is narrower than its text) is reported as a cut title, naming the whole title.
export function layoutProblems(card) {
  const problems = [];
  if (!card) return problems;
  const edge = card.getBoundingClientRect().right + 0.5;
  const brokenWords = new Set();
  const walker = document.createTreeWalker(card, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const value = node.nodeValue;
    const re = /[^\s]+/g;
    let m;
    while ((m = re.exec(value))) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const tops = new Set();
      for (const r of range.getClientRects()) {
        if (r.width > 0 && r.height > 0) tops.add(Math.round(r.top));
      }
      if (tops.size > 1) brokenWords.add(m[0].replace(/\u2060/g, ""));
    }
  }
  for (const w of brokenWords) problems.push(`word broken across lines: ${JSON.stringify(w)}`);
  const describe = (el) => {
    const text = (el.textContent || "").trim().replace(/\s+/g, " ").replace(/\u2060/g, "");
    return `<${el.tagName.toLowerCase()} class="${el.className}"> ${JSON.stringify(text.slice(0, 60))}`;
  };
  for (const button of card.querySelectorAll(".ac-pushButton")) {
    const rect = button.getBoundingClientRect();
    if (rect.width === 0 || rect.height === 0) continue; // not shown (a closed ShowCard's)
    const cut = [button, ...button.querySelectorAll("*")].some(
      (el) => el.clientWidth > 0 && el.scrollWidth > el.clientWidth + 1);
    if (cut) {
      const title = (button.getAttribute("aria-label") || button.textContent || "").trim();
      problems.push(`button title cut: ${JSON.stringify(title.replace(/\u2060/g, ""))} ` +
                    `(${Math.round(rect.width)} px wide)`);
    }
  }
  const seen = new Set();
  for (const el of card.querySelectorAll("*")) {
    const rect = el.getBoundingClientRect();
    if (rect.width === 0 || rect.height === 0) continue;
    let why = null;
    if (rect.right > edge) why = `reaches ${Math.round(rect.right - edge)} px past the card`;
    else if (el.scrollWidth > el.clientWidth + 1 && getComputedStyle(el).overflowX !== "visible"
             && el.clientWidth > 0) why = `content ${el.scrollWidth - el.clientWidth} px wider than its box`;
    if (!why) continue;
    const key = describe(el);
    if (seen.has(key)) continue;
    seen.add(key);
    problems.push(`overflows sideways (${why}): ${key}`);
    if (seen.size > 10) break;
  }
  return problems;
}

