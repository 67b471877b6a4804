/* The MLSAE latent dashboard (written by mlsae.interop.dashboard.write_dashboard): plain JavaScript, no framework,
   nothing from the network.

   The data are JavaScript files, not JSON fetched at run time, because Chromium refuses fetch() of file:// URLs
   and the site must open both as a file and from a web server: data/index.js sets window.MLSAE_INDEX (every
   latent's summary), and data/latents/chunk-NNNN.js calls mlsaeChunk(N, {...}) with the details of `chunk_size`
   latents, loaded by injecting a <script> tag when a latent page needs them.

   A chunk: {first, tokens: [string], latents: [record]}; a record: {id, lf: [firing frequency per layer],
   ex: [per layer: [[value, seq, pos, [window token], [window activation], [activation at every layer]]]],
   ni / no / nb: [[token, value]] (nearest input embeddings by cosine, largest and smallest output logits)}.
   Window and nearest tokens index `tokens`; -1 is a position outside the sequence.

   Every string from the data reaches the page as a text node or an attribute value, never as HTML. */
"use strict";

(function () {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PAGE_SIZE = 100;
  const HUE = "232, 96, 28"; // activation shading (orange)

  // ---- DOM helpers ---------------------------------------------------------------------------------------------

  function append(node, children) {
    if (children === undefined || children === null) return node;
    for (const c of Array.isArray(children) ? children : [children]) {
      if (c === null || c === undefined || c === false) continue;
      node.appendChild(typeof c === "string" || typeof c === "number" ? document.createTextNode(String(c)) : c);
    }
    return node;
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    return append(node, children);
  }

  function svg(tag, attrs, children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return append(node, children);
  }

  function tooltip(text) {
    return svg("title", {}, text);
  }

  // ---- formatting ----------------------------------------------------------------------------------------------

  function num(x, digits) {
    if (x === null || x === undefined || Number.isNaN(x)) return "—";
    if (x === 0) return "0";
    const a = Math.abs(x);
    if (a < 1e-3 || a >= 1e6) return x.toExponential((digits || 3) - 1);
    return String(Number(x.toPrecision(digits || 3)));
  }

  function percent(x) {
    if (x === null || x === undefined) return "—";
    return x === 0 ? "0 %" : num(100 * x, 3) + " %";
  }

  function visible(token) {
    if (token === "") return "∅";
    return token.replace(/\n/g, "↵").replace(/\r/g, "␍").replace(/\t/g, "⇥");
  }

  function shade(alpha) {
    return "rgba(" + HUE + ", " + Math.min(Math.max(alpha, 0), 1).toFixed(3) + ")";
  }

  function layerName(I, row) {
    return "layer " + I.layers[row];
  }

  function metaHeader(I) {
    const dl = el("dl", { class: "meta" });
    for (const [k, v] of I.meta) append(dl, [el("dt", {}, k), el("dd", {}, v)]);
    return dl;
  }

  function fail(root, message) {
    root.replaceChildren(el("p", { class: "error", role: "alert" }, message));
  }

  // ---- the index page ------------------------------------------------------------------------------------------

  const COLUMNS = [
    { key: "id", label: "latent", title: "latent index (opens its page)" },
    { key: "freq", label: "firing frequency", title: "fraction of the analysed (token, layer) pairs on which it fires" },
    { key: "mean", label: "mean layer", title: "E[L | j] under p(l | j)" },
    { key: "std", label: "layer std", title: "standard deviation of the layer under p(l | j)" },
    { key: "p", label: "p(l | j)", title: "activation mass per layer over its total (bars scaled to the latent's largest)" },
  ];

  function indexPage(root, I) {
    const n = I.n_latents;
    const L = I.layers.length;
    const sorted = new Map(); // "key:dir" -> Int32Array of latent ids
    const state = { sort: "id", dir: "asc", page: 0, q: "" };

    function valueOf(key) {
      if (key === "freq") return I.freq;
      if (key === "mean") return I.mean;
      if (key === "std") return I.std;
      return null;
    }

    function order() {
      const name = state.sort + ":" + state.dir;
      if (!sorted.has(name)) {
        const ids = Array.from({ length: n }, (_, j) => j);
        const values = valueOf(state.sort);
        const sign = state.dir === "asc" ? 1 : -1;
        if (values === null) {
          if (sign < 0) ids.reverse();
        } else {
          ids.sort((a, b) => {
            const va = values[a], vb = values[b];
            if (va === null || vb === null) return (va === null) - (vb === null) || a - b; // never-firing last
            return sign * (va - vb) || a - b;
          });
        }
        sorted.set(name, Int32Array.from(ids));
      }
      return sorted.get(name);
    }

    function readHash() {
      const params = new URLSearchParams(location.hash.slice(1));
      const sort = params.get("sort");
      state.sort = COLUMNS.some((c) => c.key === sort && c.key !== "p") ? sort : "id";
      state.dir = params.get("dir") === "desc" ? "desc" : "asc";
      state.page = Math.max(0, parseInt(params.get("page") || "0", 10) || 0);
      state.q = params.get("q") || "";
    }

    function writeHash() {
      const params = new URLSearchParams();
      if (state.sort !== "id") params.set("sort", state.sort);
      if (state.dir !== "asc") params.set("dir", state.dir);
      if (state.page) params.set("page", String(state.page));
      if (state.q) params.set("q", state.q);
      const hash = params.toString();
      if (hash !== location.hash.slice(1)) location.replace("#" + hash);
    }

    const search = el("input", {
      type: "search", id: "search", placeholder: "latent id", inputmode: "numeric", autocomplete: "off",
      "aria-label": "find a latent by id",
    });
    const message = el("span", { class: "note", id: "search-note", "aria-live": "polite" });
    const prev = el("button", { type: "button", id: "prev" }, "← previous");
    const next = el("button", { type: "button", id: "next" }, "next →");
    const pageInfo = el("span", { id: "page-info", class: "note" });
    const headRow = el("tr");
    const body = el("tbody");
    const table = el("table", { id: "latents", class: "latents" }, [el("thead", {}, headRow), body]);

    for (const col of COLUMNS) {
      const th = el("th", { scope: "col", "data-key": col.key, title: col.title });
      if (col.key === "p") th.textContent = col.label;
      else {
        th.appendChild(el("button", {
          type: "button", class: "sort",
          onclick: () => {
            if (state.sort === col.key) state.dir = state.dir === "asc" ? "desc" : "asc";
            else {
              state.sort = col.key;
              state.dir = "asc";
            }
            state.page = 0;
            update();
          },
        }, [col.label, el("span", { class: "arrow", "aria-hidden": "true" })]));
      }
      headRow.appendChild(th);
    }

    function matches() {
      const q = state.q.trim();
      if (q === "") return { ids: order(), note: "" };
      if (/^\d+$/.test(q) && Number(q) < n) return { ids: Int32Array.of(Number(q)), note: "Enter opens latent " + Number(q) };
      return { ids: new Int32Array(0), note: "no latent “" + q + "”: ids run from 0 to " + (n - 1) };
    }

    function bar(j) {
      const p = I.p[j];
      const w = 7, h = 18;
      const top = Math.max(...p);
      const box = svg("svg", { class: "pbar", width: L * w, height: h, viewBox: "0 0 " + L * w + " " + h, role: "img" });
      const text = p.map((v, r) => layerName(I, r) + ": " + num(v, 3)).join(", ");
      box.appendChild(tooltip(top > 0 ? "p(l | j): " + text : "never fires"));
      box.setAttribute("aria-label", top > 0 ? "p(l | j): " + text : "never fires");
      box.appendChild(svg("rect", { x: 0, y: h - 1, width: L * w, height: 1, class: "axis" }));
      if (top > 0) {
        p.forEach((v, r) => {
          const bh = Math.max((h - 1) * v / top, v > 0 ? 1 : 0);
          box.appendChild(svg("rect", { x: r * w + 0.5, y: h - 1 - bh, width: w - 1, height: bh, class: "bar" }));
        });
      }
      return box;
    }

    function row(j) {
      return el("tr", { class: I.mean[j] === null ? "dead" : null }, [
        el("td", { class: "num" }, el("a", { href: "latent.html#" + j }, String(j))),
        el("td", { class: "num" }, percent(I.freq[j])),
        el("td", { class: "num" }, num(I.mean[j], 3)),
        el("td", { class: "num" }, num(I.std[j], 3)),
        el("td", {}, bar(j)),
      ]);
    }

    function update() {
      writeHash();
      if (search.value !== state.q) search.value = state.q;
      const { ids, note } = matches();
      const pages = Math.max(1, Math.ceil(ids.length / PAGE_SIZE));
      state.page = Math.min(state.page, pages - 1);
      const start = state.page * PAGE_SIZE;
      const rows = [];
      for (let i = start; i < Math.min(start + PAGE_SIZE, ids.length); i++) rows.push(row(ids[i]));
      body.replaceChildren(...rows);
      message.textContent = note;
      pageInfo.textContent = ids.length
        ? "page " + (state.page + 1) + " of " + pages + " · latents " + (start + 1) + "–" + (start + rows.length) +
          " of " + ids.length
        : "no latents";
      prev.disabled = state.page === 0;
      next.disabled = state.page >= pages - 1;
      for (const th of headRow.children) {
        const key = th.getAttribute("data-key");
        const on = key === state.sort;
        th.setAttribute("aria-sort", on ? (state.dir === "asc" ? "ascending" : "descending") : "none");
        const arrow = th.querySelector(".arrow");
        if (arrow) arrow.textContent = on ? (state.dir === "asc" ? " ▲" : " ▼") : "";
      }
    }

    search.addEventListener("input", () => {
      state.q = search.value.trim();
      state.page = 0;
      update();
    });
    search.addEventListener("keydown", (event) => {
      const q = search.value.trim();
      if (event.key === "Enter" && /^\d+$/.test(q) && Number(q) < n) location.href = "latent.html#" + Number(q);
    });
    prev.addEventListener("click", () => { state.page -= 1; update(); });
    next.addEventListener("click", () => { state.page += 1; update(); });
    window.addEventListener("hashchange", () => { readHash(); update(); });

    document.title = I.title;
    root.replaceChildren(
      el("header", {}, [el("h1", {}, I.title), metaHeader(I)]),
      el("div", { class: "controls" }, [search, message, el("span", { class: "spacer" }), pageInfo, prev, next]),
      table,
    );
    readHash();
    update();
  }

  // ---- the latent page -----------------------------------------------------------------------------------------

  const chunks = new Map(); // chunk number -> data
  const waiting = new Map(); // chunk number -> [{resolve, reject}]

  window.mlsaeChunk = function (number, data) {
    chunks.set(number, data);
    const waiters = waiting.get(number) || [];
    waiting.delete(number);
    for (const w of waiters) w.resolve(data);
  };

  function loadChunk(I, number) {
    if (chunks.has(number)) return Promise.resolve(chunks.get(number));
    return new Promise((resolve, reject) => {
      if (!waiting.has(number)) {
        waiting.set(number, []);
        const name = "data/latents/chunk-" + String(number).padStart(I.chunk_digits, "0") + ".js";
        const script = el("script", { src: name });
        script.addEventListener("error", () => {
          const waiters = waiting.get(number) || [];
          waiting.delete(number);
          script.remove();
          for (const w of waiters) w.reject(new Error("could not load " + name));
        });
        document.head.appendChild(script);
      }
      waiting.get(number).push({ resolve, reject });
    });
  }

  function chart(I, j) {
    const p = I.p[j];
    const L = p.length;
    const top = Math.max(...p, 1e-12);
    const step = [0.005, 0.01, 0.02, 0.025, 0.05, 0.1, 0.2, 0.25].find((s) => top / s <= 5) || 0.25;
    const nTicks = Math.max(1, Math.ceil(top / step - 1e-9));
    const yMax = nTicks * step;
    const left = 52, right = 12, upper = 12, lower = 42;
    const bw = Math.max(14, Math.min(48, 480 / L));
    const width = left + L * bw + right, height = 220;
    const plotH = height - upper - lower;
    const y = (v) => upper + plotH * (1 - v / yMax);
    const box = svg("svg", {
      id: "p-layer-chart", class: "chart", width, height, viewBox: "0 0 " + width + " " + height, role: "img",
      "aria-label": "p(l | j) of latent " + j + " by layer",
    });
    for (let t = 0; t <= nTicks; t++) {
      const v = step * t;
      box.appendChild(svg("line", { x1: left - 4, x2: left + L * bw, y1: y(v), y2: y(v), class: t ? "grid" : "axis" }));
      box.appendChild(svg("text", { x: left - 7, y: y(v) + 4, class: "tick", "text-anchor": "end" }, num(v, 3)));
    }
    p.forEach((v, r) => {
      const x = left + r * bw;
      const rect = svg("rect", { x: x + 2, y: y(v), width: bw - 4, height: Math.max(0, y(0) - y(v)), class: "bar" });
      rect.appendChild(tooltip(layerName(I, r) + ": p(l | j) = " + num(v, 4)));
      box.appendChild(rect);
      box.appendChild(svg("text", { x: x + bw / 2, y: y(0) + 15, class: "tick", "text-anchor": "middle" },
        String(I.layers[r])));
    });
    box.appendChild(svg("line", { x1: left, x2: left, y1: upper, y2: y(0), class: "axis" }));
    box.appendChild(svg("text", { x: left + (L * bw) / 2, y: height - 6, class: "label", "text-anchor": "middle" },
      "layer"));
    box.appendChild(svg("text", {
      x: 0, y: 0, class: "label", "text-anchor": "middle",
      transform: "translate(14 " + (upper + plotH / 2) + ") rotate(-90)",
    }, "p(l | j)"));
    return box;
  }

  function layerTable(I, j, rec) {
    const head = el("tr", {}, [el("th", { scope: "row" }, "layer")]);
    const freq = el("tr", {}, [el("th", { scope: "row" }, "fires on (share of tokens)")]);
    const p = el("tr", {}, [el("th", { scope: "row" }, "p(l | j)")]);
    I.layers.forEach((layer, r) => {
      head.appendChild(el("td", { class: "num" }, String(layer)));
      freq.appendChild(el("td", { class: "num" }, percent(rec.lf[r])));
      p.appendChild(el("td", { class: "num" }, num(I.p[j][r], 3)));
    });
    return el("table", { class: "per-layer", id: "per-layer" }, el("tbody", {}, [head, freq, p]));
  }

  function tokenList(title, pairs, tokens, id) {
    const list = el("ol", { class: "nearest", id });
    for (const [t, v] of pairs) {
      list.appendChild(el("li", {}, [el("span", { class: "chip" }, visible(tokens[t])), " ", el("span", { class: "note" }, num(v, 3))]));
    }
    return el("div", { class: "nearest-box" }, [el("h3", {}, title), list]);
  }

  function strip(I, values, row) {
    const L = values.length;
    const top = Math.max(...values);
    const total = values.reduce((a, b) => a + b, 0);
    const c = 11;
    const box = svg("svg", { class: "strip", width: L * c + 1, height: c + 1, viewBox: "0 0 " + (L * c + 1) + " " + (c + 1) });
    box.appendChild(tooltip("this latent at every layer on the example's token"));
    values.forEach((v, r) => {
      const rect = svg("rect", {
        x: r * c + 0.5, y: 0.5, width: c, height: c, fill: shade(top > 0 ? v / top : 0),
        class: r === row ? "cell here" : "cell",
      });
      rect.appendChild(tooltip(layerName(I, r) + ": " + num(v, 4) + (total > 0 ? " (" + percent(v / total) + " of this token's)" : "")));
      box.appendChild(rect);
    });
    return box;
  }

  function exampleRow(I, example, row, scale, tokens) {
    const [value, seq, pos, ids, acts, layerActs] = example;
    const before = I.context[0];
    const text = el("span", { class: "tokens" });
    ids.forEach((t, w) => {
      if (t < 0) return;
      const a = acts[w];
      text.appendChild(el("span", {
        class: w === before ? "tok focus" : "tok", title: num(a, 4),
        style: a > 0 ? "background-color: " + shade(a / scale) : null,
      }, visible(tokens[t])));
    });
    return el("div", { class: "example" }, [
      el("span", { class: "value", title: "sequence " + seq + ", position " + pos }, num(value, 3)),
      strip(I, layerActs, row),
      text,
    ]);
  }

  function latentPage(root, I) {
    const n = I.n_latents;
    let shown = -1;

    function nav(j) {
      const prev = j > 0 ? el("a", { href: "#" + (j - 1), id: "prev" }, "← latent " + (j - 1)) : el("span", { class: "note" }, "← first");
      const next = j < n - 1 ? el("a", { href: "#" + (j + 1), id: "next" }, "latent " + (j + 1) + " →") : el("span", { class: "note" }, "last →");
      return el("nav", { class: "controls" }, [el("a", { href: "index.html" }, "all latents"), el("span", { class: "spacer" }), prev, next]);
    }

    function details(j, data) {
      const rec = data.latents[j - data.first];
      const tokens = data.tokens;
      const fires = I.mean[j] !== null;
      const parts = [];
      if (!fires) {
        parts.push(el("p", { class: "dead", id: "never-fires" },
          "Latent " + j + " never fires on the " + I.n_tokens.toLocaleString("en") + " analysed tokens at any of the " +
          I.layers.length + " layers."));
      } else {
        parts.push(el("section", { class: "summary" }, [
          el("div", { class: "stats" }, [
            el("dl", { class: "meta" }, [
              el("dt", {}, "firing frequency"), el("dd", { id: "freq" }, percent(I.freq[j]) + " of (token, layer) pairs"),
              el("dt", {}, "mean layer"), el("dd", { id: "mean" }, num(I.mean[j], 3)),
              el("dt", {}, "layer std"), el("dd", { id: "std" }, num(I.std[j], 3)),
            ]),
            layerTable(I, j, rec),
          ]),
          el("figure", {}, [chart(I, j), el("figcaption", { class: "note" },
            "Aggregated distribution over layers: the latent's activation mass at each layer over its total.")]),
        ]));
      }
      parts.push(el("section", {}, [
        el("h2", {}, "Nearest tokens"),
        el("p", { class: "note" }, "Read in the SAE's standardised (and lens-transformed) space without the final norm: approximate, as any logit-lens reading."),
        el("div", { class: "nearest-row" }, [
          tokenList("input embeddings nearest W_enc[j] (cosine)", rec.ni, tokens, "nearest-input"),
          tokenList("largest logits of W_dec[:, j]", rec.no, tokens, "nearest-output"),
          tokenList("smallest logits of W_dec[:, j]", rec.nb, tokens, "nearest-bottom"),
        ]),
      ]));
      if (fires) {
        const sections = [el("h2", {}, "Top examples per layer"), el("p", { class: "note" },
          "Each row: the activation, the latent at every layer on the example's token (its layer outlined), and the " +
          "context, shaded by the activation at that layer (the example's token bold; hover for values).")];
        rec.ex.forEach((examples, r) => {
          const head = layerName(I, r) + " · fires on " + percent(rec.lf[r]) + " of tokens · p(l | j) = " + num(I.p[j][r], 3);
          const block = el("section", { class: "layer", "data-layer": I.layers[r] }, el("h3", {}, head));
          if (!examples.length) block.appendChild(el("p", { class: "note" }, "never fires at this layer"));
          const scale = examples.length ? Math.max(examples[0][0], 1e-12) : 1;
          for (const e of examples) block.appendChild(exampleRow(I, e, r, scale, tokens));
          sections.push(block);
        });
        parts.push(el("section", { id: "examples" }, sections));
      }
      return parts;
    }

    function show() {
      const raw = decodeURIComponent(location.hash.slice(1));
      const j = /^\d+$/.test(raw) ? Number(raw) : raw === "" ? 0 : NaN;
      if (!(j >= 0 && j < n)) {
        fail(root, "No latent “" + raw + "”: ids run from 0 to " + (n - 1) + ".");
        root.prepend(nav(0));
        return;
      }
      if (j === shown) return;
      shown = j;
      document.title = "Latent " + j + " · " + I.title;
      const body = el("div", { id: "latent-body" }, el("p", { class: "note" }, "Loading…"));
      root.replaceChildren(nav(j), el("h1", {}, "Latent " + j), body);
      loadChunk(I, Math.floor(j / I.chunk_size)).then(
        (data) => { if (shown === j) body.replaceChildren(...details(j, data)); },
        (err) => { if (shown === j) fail(body, err.message); },
      );
    }

    window.addEventListener("hashchange", show);
    document.addEventListener("keydown", (event) => {
      if (event.target instanceof HTMLInputElement || event.altKey || event.ctrlKey || event.metaKey) return;
      if (event.key === "ArrowLeft" && shown > 0) location.hash = "#" + (shown - 1);
      if (event.key === "ArrowRight" && shown >= 0 && shown < n - 1) location.hash = "#" + (shown + 1);
    });
    show();
  }

  // ---- start ---------------------------------------------------------------------------------------------------

  function start() {
    const root = document.getElementById("app");
    const I = window.MLSAE_INDEX;
    if (!I) {
      fail(root, "data/index.js is missing or did not load: this folder is not a complete dashboard.");
      return;
    }
    if (document.body.getAttribute("data-page") === "latent") latentPage(root, I);
    else indexPage(root, I);
  }

  start();
})();
