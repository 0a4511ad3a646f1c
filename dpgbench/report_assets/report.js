// dpgbench report page: reads the JSON block, draws the summary, then filters, sorts and pages the prompts.
// Text from the data is only ever set with textContent, so prompts and answers cannot inject markup.
"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const RUNS = DATA.runs;
  const TWO = RUNS.length === 2;
  const GLYPH = { "1": "\u2713", "0": "\u2717", x: "\u2298", "-": "\u2013", m: "\u25a1", u: "?" };
  const STATE_CLASS = { "1": "st-1", "0": "st-0", x: "st-x", "-": "st-dash", m: "st-m", u: "st-u" };
  const STATE_TITLE = {
    "1": "yes",
    "0": "no",
    x: "the judge said yes; zeroed because a parent question failed",
    "-": "not counted by this protocol",
    m: "image missing",
    u: "the judge gave no answer",
  };
  const view = {
    protocol: DATA.protocol,
    category: "",
    min: 0,
    max: 100,
    search: "",
    sort: "file",
    onlyInvalidated: false,
    page: 0,
  };

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children || []) if (child) node.appendChild(child);
    return node;
  }

  function fmt(value) {
    return value === null || value === undefined ? "-" : value.toFixed(2);
  }

  function l1Of(l2) {
    return l2.split("-")[0].trim();
  }

  function runName(r) {
    return TWO ? (r === 0 ? "A" : "B") : "";
  }

  // ------------------------------------------------------------------------------------ summary

  function renderMeta() {
    document.getElementById("meta").textContent =
      "questions: " + DATA.questions.name + " (sha256 " + DATA.questions.sha256.slice(0, 12) + "), " +
      "made " + DATA.generated + " by dpgbench " + DATA.version;
    const warnings = document.getElementById("warnings");
    for (const text of DATA.warnings) warnings.appendChild(el("p", { className: "warning", text: text }));
  }

  function renderRuns() {
    const head = el("tr", {}, [
      el("th", { text: "run" }), el("th", { text: "judge" }), el("th", { text: "backend" }), el("th", { text: "model" }),
    ].concat(DATA.protocols.map((p) => el("th", { className: "num", text: p + " (prompts)" }))));
    const rows = RUNS.map((run, r) =>
      el("tr", {}, [
        el("td", { text: (TWO ? runName(r) + ": " : "") + run.label }),
        el("td", { text: run.judge }),
        el("td", { text: run.backend }),
        el("td", { text: run.model }),
      ].concat(DATA.protocols.map((p) =>
        el("td", { className: "num", text: fmt(run.overall[p]) + " (" + run.n[p] + ")" })))));
    const box = document.getElementById("runs-table");
    box.replaceChildren(el("table", { id: "runs" }, [el("thead", {}, [head]), el("tbody", {}, rows)]));
  }

  function renderCategories() {
    const p = view.protocol;
    const head = el("tr", {}, [el("th", { text: "category (" + p + ")" })].concat(
      RUNS.map((run, r) => el("th", { className: "num", text: (TWO ? runName(r) + ": " : "") + "score (pairs)" }))));
    const rows = [];
    for (const level of ["l1", "l2"]) {
      for (const category of DATA.categories[level]) {
        const cells = RUNS.map((run) => {
          const s = run[level][p][category];
          return el("td", { className: "num", text: s ? fmt(s[0]) + " (" + s[1] + ")" : "-" });
        });
        rows.push(el("tr", { className: level }, [el("td", { text: (level === "l2" ? "\u00a0\u00a0" : "") + category })].concat(cells)));
      }
    }
    const box = document.getElementById("categories-table");
    box.replaceChildren(el("table", { id: "categories" }, [el("thead", {}, [head]), el("tbody", {}, rows)]));
  }

  function renderStats() {
    let images = 0, missing = 0, questions = 0, invalidated = 0;
    for (const prompt of DATA.prompts) {
      questions += prompt.q.length;
      const run = prompt.runs[0];
      if (!run) continue;
      for (const image of run.images) {
        if (image.thumb) images += 1;
        if (image.problem) missing += 1;
      }
      for (const states of run.state[view.protocol]) {
        for (const c of states) if (c === "x") invalidated += 1;
      }
    }
    document.getElementById("stat-prompts").textContent = DATA.prompts.length;
    document.getElementById("stat-images").textContent = images;
    document.getElementById("stat-missing").textContent = missing;
    document.getElementById("stat-questions").textContent = questions;
    document.getElementById("stat-invalidated").textContent = invalidated;
    for (const node of document.querySelectorAll(".protocol-name")) node.textContent = view.protocol;
  }

  // ------------------------------------------------------------------------------------ filters

  function score(prompt, r) {
    const run = prompt.runs[r];
    return run ? run.score[view.protocol] : null;
  }

  function delta(prompt) {
    const a = score(prompt, 0), b = score(prompt, 1);
    return a === null || b === null ? null : b - a;
  }

  function hasInvalidated(prompt) {
    return prompt.runs.some((run) => run && run.state[view.protocol].some((s) => s.includes("x")));
  }

  function matches(prompt) {
    if (view.category && !prompt.q.some((q) => q[2] === view.category || l1Of(q[2]) === view.category)) return false;
    if (view.min > 0 || view.max < 100) {
      const s = score(prompt, 0);
      if (s === null || s < view.min || s > view.max) return false;
    }
    if (view.search) {
      const needle = view.search.toLowerCase();
      if (!prompt.id.toLowerCase().includes(needle) && !prompt.text.toLowerCase().includes(needle)) return false;
    }
    if (view.onlyInvalidated && !hasInvalidated(prompt)) return false;
    return true;
  }

  function ordered(prompts) {
    const key = {
      "score-asc": (p) => score(p, 0),
      "score-desc": (p) => -score(p, 0),
      "delta-asc": (p) => delta(p),
      "delta-desc": (p) => -delta(p),
    }[view.sort];
    if (!key) return prompts;
    const known = prompts.filter((p) => key(p) !== null && !Number.isNaN(key(p)));
    const unknown = prompts.filter((p) => !(key(p) !== null && !Number.isNaN(key(p))));
    return known.sort((x, y) => key(x) - key(y)).concat(unknown);
  }

  // ------------------------------------------------------------------------------------ prompts

  // Questions as a tree: each under its first parent that exists; other parents are noted beside it.
  function tree(questions) {
    const firstIndex = new Map();
    questions.forEach((q, i) => { if (!firstIndex.has(q[0])) firstIndex.set(q[0], i); });
    const children = questions.map(() => []);
    const notes = questions.map(() => []);
    const roots = [];
    questions.forEach((q, i) => {
      const parents = q[3].filter((p) => p !== 0 && firstIndex.has(p) && firstIndex.get(p) !== i);
      const absent = q[3].filter((p) => p !== 0 && !firstIndex.has(p));
      if (parents.length > 1) notes[i].push("also depends on " + parents.slice(1).join(", "));
      if (absent.length) notes[i].push("parent " + absent.join(", ") + " not in the graph");
      if (parents.length) children[firstIndex.get(parents[0])].push(i);
      else roots.push(i);
    });
    const order = [];
    const seen = new Set();
    function visit(i, depth) {
      if (seen.has(i)) return;
      seen.add(i);
      order.push({ index: i, depth: depth, notes: notes[i] });
      for (const child of children[i]) visit(child, depth + 1);
    }
    for (const i of roots) visit(i, 0);
    questions.forEach((q, i) => {
      if (!seen.has(i)) {
        notes[i].push("in a dependency cycle");
        visit(i, 0);
      }
    });
    return order;
  }

  function thumbnails(prompt, r) {
    const run = prompt.runs[r];
    const cells = [el("span", { className: "run-label", text: TWO ? runName(r) : "" })];
    if (!run) {
      cells.push(el("span", { className: "note", text: "not in this run" }));
      return el("div", { className: "image-row" }, cells);
    }
    run.images.forEach((image, i) => {
      const caption = prompt.id + " image " + i + (TWO ? " (" + RUNS[r].label + ")" : "");
      if (image.thumb) {
        cells.push(el("img", {
          className: "thumb", src: image.thumb, alt: caption, title: caption,
          "data-src": image.src || "", "data-caption": caption,
        }));
      } else {
        cells.push(el("div", { className: "thumb missing", title: image.problem || "", text: "missing: " + (image.problem || "") }));
      }
    });
    return el("div", { className: "image-row" }, cells);
  }

  function questionTable(prompt) {
    const head = [el("th", { text: "#" }), el("th", { text: "question" }), el("th", { text: "category" })];
    prompt.runs.forEach((run, r) => {
      const count = run ? run.images.length : 0;
      for (let i = 0; i < count; i++) head.push(el("th", { className: "st", text: runName(r) + (i + 1) }));
    });
    const rows = tree(prompt.q).map((node) => {
      const q = prompt.q[node.index];
      const text = el("td", { className: "q" }, [
        el("span", { text: "\u00a0\u00a0\u00a0\u00a0".repeat(node.depth) + (node.depth ? "\u2514 " : "") + q[1] }),
        node.notes.length ? el("span", { className: "also", text: " (" + node.notes.join("; ") + ")" }) : null,
      ]);
      const cells = [el("td", { className: "num", text: q[0] }), text, el("td", { className: "cat", text: q[2] })];
      prompt.runs.forEach((run) => {
        if (!run) return;
        run.state[view.protocol].forEach((states, i) => {
          const c = states[node.index];
          const raw = run.raw[i] ? run.raw[i][node.index] : null;
          const title = STATE_TITLE[c] + (raw !== null && raw !== undefined ? " (answer: " + raw + ")" : "");
          cells.push(el("td", { className: "st " + STATE_CLASS[c], title: title, "data-state": c, text: GLYPH[c] }));
        });
      });
      return el("tr", {}, cells);
    });
    return el("table", { className: "questions" }, [el("thead", {}, [el("tr", {}, head)]), el("tbody", {}, rows)]);
  }

  function promptCard(prompt) {
    const title = [el("span", { className: "id", text: prompt.id })];
    prompt.runs.forEach((run, r) => {
      const label = (TWO ? runName(r) + " " : "") + view.protocol + " ";
      title.push(el("span", { className: "score", text: label + fmt(score(prompt, r)) }));
    });
    const d = TWO ? delta(prompt) : null;
    if (TWO) {
      title.push(el("span", {
        className: "delta " + (d > 0 ? "up" : d < 0 ? "down" : ""),
        text: "\u0394 " + (d === null ? "-" : (d > 0 ? "+" : "") + d.toFixed(2)),
      }));
    }
    const parts = [el("h3", {}, title), el("p", { className: "text", text: prompt.text })];
    prompt.runs.forEach((run, r) => {
      const why = run && run.excluded[view.protocol];
      if (why) parts.push(el("p", { className: "excluded", text: (TWO ? runName(r) + ": " : "") + "not counted by " + view.protocol + ": " + why }));
    });
    prompt.runs.forEach((run, r) => parts.push(thumbnails(prompt, r)));
    parts.push(questionTable(prompt));
    return el("article", { className: "prompt", "data-id": prompt.id }, parts);
  }

  function renderList() {
    const chosen = ordered(DATA.prompts.filter(matches));
    const pages = Math.max(1, Math.ceil(chosen.length / DATA.page_size));
    view.page = Math.min(view.page, pages - 1);
    const start = view.page * DATA.page_size;
    const shown = chosen.slice(start, start + DATA.page_size);
    document.getElementById("shown-count").textContent = chosen.length;
    document.getElementById("total-count").textContent = DATA.prompts.length;
    for (const info of document.querySelectorAll(".page-info")) {
      info.textContent = chosen.length
        ? "prompts " + (start + 1) + "\u2013" + (start + shown.length) + " of " + chosen.length + " (page " + (view.page + 1) + " of " + pages + ")"
        : "no prompt matches";
    }
    for (const button of document.querySelectorAll(".pager .prev")) button.disabled = view.page === 0;
    for (const button of document.querySelectorAll(".pager .next")) button.disabled = view.page >= pages - 1;
    document.getElementById("prompt-list").replaceChildren(...shown.map(promptCard));
  }

  // ------------------------------------------------------------------------------------ wiring

  function setupControls() {
    const protocol = document.getElementById("protocol");
    for (const p of DATA.protocols) protocol.appendChild(el("option", { value: p, text: p, selected: p === view.protocol }));
    const category = document.getElementById("category");
    for (const level of ["l1", "l2"]) {
      const group = el("optgroup", { label: level.toUpperCase() });
      for (const c of DATA.categories[level]) group.appendChild(el("option", { value: c, text: c }));
      category.appendChild(group);
    }
    const sort = document.getElementById("sort");
    const sorts = [["file", "file order"], ["score-asc", "score, lowest first"], ["score-desc", "score, highest first"]];
    if (TWO) sorts.push(["delta-asc", "B - A, most regressed first"], ["delta-desc", "B - A, most improved first"]);
    for (const [value, text] of sorts) sort.appendChild(el("option", { value: value, text: text }));

    const refresh = (all) => {
      view.protocol = protocol.value;
      view.category = category.value;
      const min = parseFloat(document.getElementById("min-score").value);
      const max = parseFloat(document.getElementById("max-score").value);
      view.min = Number.isNaN(min) ? 0 : min;
      view.max = Number.isNaN(max) ? 100 : max;
      view.search = document.getElementById("search").value.trim();
      view.sort = sort.value;
      view.onlyInvalidated = document.getElementById("only-invalidated").checked;
      view.page = 0;
      if (all) {
        renderCategories();
        renderStats();
      }
      renderList();
    };
    protocol.addEventListener("change", () => refresh(true));
    for (const id of ["category", "sort", "only-invalidated"]) document.getElementById(id).addEventListener("change", () => refresh(false));
    for (const id of ["min-score", "max-score", "search"]) document.getElementById(id).addEventListener("input", () => refresh(false));
    for (const button of document.querySelectorAll(".pager .prev")) button.addEventListener("click", () => { view.page -= 1; renderList(); });
    for (const button of document.querySelectorAll(".pager .next")) button.addEventListener("click", () => { view.page += 1; renderList(); });

    const box = document.getElementById("lightbox");
    const big = document.getElementById("lightbox-img");
    document.getElementById("prompt-list").addEventListener("click", (event) => {
      const thumb = event.target.closest("img.thumb");
      if (!thumb) return;
      // The original sits beside the run; if the report was moved away from it, show the thumbnail.
      big.onerror = () => { big.onerror = null; big.src = thumb.src; };
      big.src = thumb.dataset.src || thumb.src;
      document.getElementById("lightbox-caption").textContent = thumb.dataset.caption;
      box.hidden = false;
    });
    box.addEventListener("click", () => { box.hidden = true; });
    document.addEventListener("keydown", (event) => { if (event.key === "Escape") box.hidden = true; });
  }

  renderMeta();
  renderRuns();
  renderCategories();
  renderStats();
  setupControls();
  renderList();
  document.body.dataset.ready = "1";
})();
