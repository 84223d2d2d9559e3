// coxlmm concept browser: renders a run's report from the JSON export embedded in the page
// (<script id="coxlmm-data">, schema in docs/browser.md). No network, no libraries.
(function () {
  "use strict";
  var RANK_COLOURS = ["#1f77b4", "#ff7f0e", "#2ca02c"];
  var data = JSON.parse(document.getElementById("coxlmm-data").textContent);
  var imagesNode = document.getElementById("coxlmm-images");  // inlined thumbnails (W&B), else files
  var images = imagesNode ? JSON.parse(imagesNode.textContent) : {};
  var pageNode = document.getElementById("coxlmm-page");
  var page = pageNode ? JSON.parse(pageNode.textContent) : {};

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (attrs[k] === null || attrs[k] === undefined) return;
      if (k === "text") node.textContent = attrs[k];
      else if (k === "cls") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) {
      if (c === null || c === undefined) return;
      node.appendChild(typeof c === "string" ? document.createTextNode(c) : c);
    });
    return node;
  }
  function svg(tag, attrs, children) {
    var node = document.createElementNS("http://www.w3.org/2000/svg", tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) { node.appendChild(c); });
    return node;
  }
  function fmt(x, digits) {
    if (x === null || x === undefined) return "–";
    if (typeof x !== "number") return String(x);
    var a = Math.abs(x);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return x.toExponential(2);
    return x.toFixed(digits === undefined ? 3 : digits).replace(/\.?0+$/, "") || "0";
  }
  function sig(x) { return x === null || x === undefined ? "–" : String(Number(x.toPrecision(3))); }
  function pct(x) { return x === null || x === undefined ? "–" : (100 * x).toFixed(x < 0.01 ? 2 : 1) + "%"; }
  // A concept's value of a per-concept column (the metrics describe them; the page knows none by name).
  function scoreOf(c, key) {
    var hit = (c.scores || []).filter(function (s) { return s.key === key; })[0];
    return hit && typeof hit.value === "number" ? hit.value : null;
  }

  // --- one sample: thumbnail, activation, captions ---
  function figure(s, label, small) {
    var img = s.image
      ? el("img", {src: images[s.image] || s.image, alt: s.split + " sample " + s.id, title: s.id})
      : el("div", {cls: "noimg", text: "no image"});
    var refs = s.captions && s.captions.length ? "reference: " + s.captions.join(" | ") : "";
    return el("figure", {cls: small ? "s small" : "s", title: (s.caption || "") + (refs ? "\n" + refs : "")}, [
      img,
      el("figcaption", {}, [
        label ? el("div", {cls: "bar-v", style: "width:" + Math.round(100 * Math.max(0, Math.min(1, s.ratio || 0))) + "%"}) : null,
        label ? el("div", {cls: "act", text: label}) : null,
        small ? null : el("div", {cls: "cap", text: s.caption || ""}),
      ]),
    ]);
  }
  function activationLabel(s) { return sig(s.value) + " (" + fmt(s.ratio, 2) + ")"; }

  // --- histogram of non-zero activations, train and test ---
  function histogram(c) {
    var centres = c.freq_hist_data_bar_values, tr = c.freq_hist_data_bar_heights, te = c.freq_hist_data_bar_heights_test;
    if (!centres.length) return el("div", {cls: "muted", text: "no non-zero activation"});
    var W = 290, H = 90, pad = 14, n = centres.length, bw = (W - 2) / n;
    var ntr = data.n_train || 1, nte = data.n_test || 1;
    var ftr = tr.map(function (h) { return h / ntr; }), fte = te.map(function (h) { return h / nte; });
    var top = Math.max.apply(null, ftr.concat(fte).concat([1e-12]));
    var root = svg("svg", {width: W, height: H + pad, viewBox: "0 0 " + W + " " + (H + pad), role: "img"});
    function bars(f, counts, colour, opacity, split) {
      f.forEach(function (v, i) {
        if (!counts[i]) return;
        var h = Math.max(1, (H - 4) * v / top);
        var r = svg("rect", {x: 1 + i * bw, y: H - h, width: Math.max(1, bw - 1), height: h, fill: colour, "fill-opacity": opacity});
        var t = svg("title");
        t.textContent = split + ": " + counts[i] + " samples near v=" + fmt(centres[i]);
        r.appendChild(t);
        root.appendChild(r);
      });
    }
    bars(ftr, tr, "var(--train)", 0.85, "train");
    if (data.n_test) bars(fte, te, "var(--test)", 0.55, "test");
    root.appendChild(svg("line", {x1: 0, x2: W, y1: H, y2: H, stroke: "#999"}));
    var edges = c.freq_hist_data_bin_edges;
    [[edges[0], "start"], [edges[edges.length - 1], "end"]].forEach(function (p, j) {
      var t = svg("text", {x: j ? W - 1 : 1, y: H + pad - 2, "font-size": 10, fill: "#666", "text-anchor": p[1]});
      t.textContent = fmt(p[0]);
      root.appendChild(t);
    });
    return el("div", {cls: "hist"}, [root, el("div", {cls: "legend"}, [
      el("span", {cls: "sw", style: "background:var(--train)"}), "train (share of " + data.n_train + ")",
      data.n_test ? el("span", {cls: "sw", style: "background:var(--test);opacity:.6"}) : null,
      data.n_test ? "test (share of " + data.n_test + ")" : null,
    ])]);
  }

  // --- the logit lens: kept words bold, dropped tokens grey with the reason on hover ---
  function tokens(c) {
    var chips = c.pos_str.map(function (p, i) {
      var reason = c.pos_filter[i], kept = reason === "kept";
      var text = p.trim() || (p ? "␣" : "∅");
      return el("span", {cls: "tok " + (kept ? "kept" : "dropped"), title: kept ? "kept (in T_k)" : "dropped: " + reason,
                         "data-reason": reason}, [text, el("span", {cls: "v", text: fmt(c.pos_values[i], 1)})]);
    });
    return el("div", {cls: "chips"}, chips);
  }

  function kv(rows) {
    return el("table", {cls: "kv"}, rows.map(function (r) { return el("tr", {}, [el("td", {text: r[0]}), el("td", {text: r[1]})]); }));
  }
  function stats(c) {
    var out = [el("h3", {text: "stats"}), kv([
      ["density", pct(c.frac_nonzero)], ["active samples", String(c.n_active)],
      ["max activation", fmt(c.max_act)], ["median (active)", fmt(c.median_act)],
    ])];
    if ((c.scores || []).length) {
      out.push(el("h3", {text: "scores"}));
      out.push(el("table", {cls: "kv concept-scores"}, c.scores.map(function (s) {
        return el("tr", {"data-key": s.key}, [el("td", {text: s.label}), el("td", {text: fmt(s.value)})]);
      })));
    }
    return out;
  }

  function images_(c) {
    var out = [el("h3", {text: "most activating (X_k,MAS) — v_k (v_k / max v_k)"})];
    out.push(c.top_activations.length
      ? el("div", {cls: "strip"}, c.top_activations.map(function (s) { return figure(s, activationLabel(s)); }))
      : el("div", {cls: "muted", text: "no activating sample"}));
    if (c.activations.length) out.push(el("h3", {text: "across the range: equal-count bins of v_k > 0, highest first (caption on hover)"}));
    c.activations.forEach(function (b) {
      out.push(el("div", {cls: "binrow"}, [
        el("div", {cls: "bin", text: "[" + sig(b.bin_min) + ", " + sig(b.bin_max) + "] " + pct(b.bin_contains) + " of train"}),
        el("div", {cls: "strip"}, b.examples.map(function (s) { return figure(s, activationLabel(s), true); })),
      ]));
    });
    return out;
  }

  function card(c) {
    var words = c.words.length ? c.words.join(", ") : "(no words)";
    return el("section", {cls: "card concept", id: "concept-" + c.index, "data-words": c.words.join(" ")}, [
      el("h2", {}, ["Concept " + c.index, el("span", {cls: "words", text: words})]),
      el("div", {cls: "cols"}, [
        el("div", {}, stats(c)),
        el("div", {}, [el("h3", {text: "logit lens: top tokens of W_U · u_k"}), tokens(c), el("h3", {text: "activation histogram (v_k ≠ 0)"}), histogram(c)]),
        el("div", {}, images_(c)),
      ]),
    ]);
  }

  function localCard(s) {
    var bars = s.top.map(function (t, r) {
      var c = data.concepts[t.concept];
      var label = "c" + t.concept + ": " + (c.words.slice(0, 5).join(", ") || "(no words)");
      return el("a", {href: "#concept-" + t.concept, "data-concept": t.concept, title: "v=" + fmt(t.value)}, [
        el("div", {}, [label, el("span", {cls: "muted", text: "  " + fmt(t.ratio, 2)})]),
        el("div", {cls: "track"}, [el("div", {cls: "fill", style: "width:" + Math.round(100 * Math.max(0, t.ratio || 0)) + "%;background:" + RANK_COLOURS[r % 3]})]),
      ]);
    });
    return el("div", {cls: "card"}, [figure(s, null), el("div", {cls: "bars"}, bars)]);
  }

  // --- page ---
  var title = "Concepts — " + [data.method, data.token ? "token '" + data.token + "'" : "", "layer " + (data.layer_name || data.layer), "K = " + data.n_concepts].filter(Boolean).join(" · ");
  document.title = title;
  // The run's numbers, grouped by the table their metric puts them in, under their labels.
  var metricRows = [], lastTable = null;
  data.metrics.forEach(function (m) {
    if (m.table !== lastTable) {
      metricRows.push(el("tr", {cls: "group"}, [el("th", {colspan: 2, text: m.table})]));
      lastTable = m.table;
    }
    var name = m.label + (m.of ? " (" + m.of + ")" : "") + (m.row && m.row !== m.label ? " · " + m.row : "");
    metricRows.push(el("tr", {"data-key": m.key, title: m.key}, [el("td", {text: name}), el("td", {text: fmt(m.value, 4)})]));
  });
  var headline = data.metrics.filter(function (m) { return m.summary; }).map(function (m) {
    return m.label + (m.row && m.row !== m.label ? " (" + m.row + ")" : "") + " " + fmt(m.value, 3);
  }).join(" · ");
  var header = el("header", {cls: "top"}, [
    el("h1", {text: title}),
    el("div", {cls: "sub"}, [
      page.up ? el("a", {href: page.up, text: "↑ all layers"}) : null, page.up ? " · " : null,
      data.n_train + " train / " + data.n_test + " test samples · ",
      el("a", {href: "#concepts", text: "concepts"}), " · ", el("a", {href: "#local", text: "local interpretation"}),
      page.inline ? null : " · ", page.inline ? null : el("a", {href: "report.json", text: "report.json"}),
    ]),
    headline ? el("div", {cls: "sub headline", text: headline}) : null,
    metricRows.length ? el("details", {cls: "metrics"}, [el("summary", {text: "metrics (" + data.metrics.length + ")"}), el("table", {cls: "kv"}, metricRows)]) : null,
  ]);

  var search = el("input", {type: "search", id: "search", placeholder: "filter concepts by word", "aria-label": "filter concepts by word"});
  var sort = el("select", {id: "sort", "aria-label": "sort concepts"}, [
    ["index", "concept index"], ["density", "density"], ["max", "max activation"],
  ].concat((data.sort_keys || []).map(function (k) { return ["score:" + k.key, k.label]; }))
    .map(function (o) { return el("option", {value: o[0], text: o[1]}); }));
  var count = el("span", {cls: "muted", id: "count"});
  var list = el("div", {id: "concept-list"}, data.concepts.map(card));
  var cards = Array.prototype.slice.call(list.children);

  function applyFilter() {
    var q = search.value.trim().toLowerCase(), shown = 0;
    cards.forEach(function (node) {
      var words = node.getAttribute("data-words").toLowerCase().split(" ");
      var ok = !q || words.some(function (w) { return w.indexOf(q) >= 0; });
      node.classList.toggle("hidden", !ok);
      if (ok) shown += 1;
    });
    count.textContent = "showing " + shown + " of " + cards.length + " concepts";
  }
  function applySort() {
    var key = sort.value;
    var value = {
      index: function (c) { return -c.index; }, density: function (c) { return c.frac_nonzero; },
      max: function (c) { return c.max_act; },
    }[key] || function (c) { return scoreOf(c, key.slice("score:".length)); };
    var order = data.concepts.slice().sort(function (a, b) {
      var va = value(a), vb = value(b);
      if (va === null && vb === null) return a.index - b.index;
      if (va === null) return 1;
      if (vb === null) return -1;
      return vb - va || a.index - b.index;
    });
    order.forEach(function (c) { list.appendChild(cards[c.index]); });
  }
  search.addEventListener("input", applyFilter);
  sort.addEventListener("change", applySort);
  // A link to a concept hidden by the filter clears the filter first.
  function reveal() {
    var m = /^#concept-(\d+)$/.exec(location.hash);
    if (m && cards[+m[1]] && cards[+m[1]].classList.contains("hidden")) {
      search.value = "";
      applyFilter();
      cards[+m[1]].scrollIntoView();
    }
  }
  window.addEventListener("hashchange", reveal);

  var localSection = el("section", {id: "local"}, [
    el("h2", {text: "Local interpretation: test samples and their top-3 concepts (v_k / max_k v_k; click a bar for the concept)"}),
    data.local.length ? el("div", {cls: "local"}, data.local.map(localCard)) : el("p", {cls: "muted", text: "no test samples in this run"}),
  ]);
  var app = document.getElementById("app");
  app.appendChild(header);
  app.appendChild(el("main", {}, [
    el("section", {id: "concepts"}, [el("div", {cls: "controls"}, [search, el("label", {}, ["sort by ", sort]), count]), list]),
    localSection,
  ]));
  applyFilter();
  reveal();
})();
