// hf_e2e_sae feature browser: list page (index.html) and feature page (feature.html#sae=K&f=ID).
// All data comes from script files (data/*.js) so the site works from file:// with no server.
"use strict";
var BROWSER = (function () {
  var PAGE = 100;
  var shards = {};  // "k/shard" -> array of feature details
  var shardWaiters = {};

  function loadScript(src) {
    return new Promise(function (resolve, reject) {
      var s = document.createElement("script");
      s.src = src;
      s.onload = function () { resolve(); };
      s.onerror = function () { reject(new Error("cannot load " + src)); };
      document.head.appendChild(s);
    });
  }

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) {
      if (k === "text") node.textContent = attrs[k];
      else if (k === "class") node.className = attrs[k];
      else node.setAttribute(k, attrs[k]);
    });
    (children || []).forEach(function (c) { node.appendChild(typeof c === "string" ? document.createTextNode(c) : c); });
    return node;
  }

  function tokenText(id) {
    var t = BROWSER_VOCAB[String(id)];
    if (t === undefined) return "<" + id + ">";
    return t.replace(/\n/g, "\u21b5");
  }

  function fmt(x) {
    if (x === 0) return "0";
    if (Math.abs(x) < 1e-3) return x.toExponential(2);
    return Number(x.toPrecision(3)).toString();
  }

  function featureHref(k, f) { return "feature.html#sae=" + k + "&f=" + f; }

  function loadIndexes() {
    return Promise.all(BROWSER_META.saes.map(function (_, k) { return loadScript("data/index-" + k + ".js"); }));
  }

  // ------------------------------------------------------------------ list page
  // Row: [id, density, mean, max, top token ids, top logit ids, {other sae: [nearest id, cosine]}]
  var COLUMNS = [
    {name: "feature", get: function (r) { return r[0]; }},
    {name: "density", get: function (r) { return r[1]; }, num: true},
    {name: "mean act", get: function (r) { return r[2]; }, num: true},
    {name: "max act", get: function (r) { return r[3]; }, num: true},
    {name: "top tokens", get: function (r) { return r[4].map(tokenText).join(" "); }},
    {name: "top logits", get: function (r) { return r[5].map(tokenText).join(" "); }},
  ];

  function matches(row, query) {
    if (!query) return true;
    if (/^#?\d+$/.test(query)) return row[0] === Number(query.replace("#", ""));  // a number: that feature
    var q = query.toLowerCase();
    return row[4].concat(row[5]).some(function (id) { return tokenText(id).toLowerCase().indexOf(q) >= 0; });
  }

  function listPanel(k) {
    var meta = BROWSER_META.saes[k], rows = BROWSER_INDEX[k];
    var state = {query: "", sort: COLUMNS[0], asc: true, page: 0, hideDead: false};
    var others = BROWSER_META.saes.map(function (_, j) { return j; }).filter(function (j) { return j !== k; });
    var section = el("section", {id: "sae-" + k});
    section.appendChild(el("h2", {text: meta.label}));
    section.appendChild(el("p", {class: "sub", text: meta.site + " \u00b7 " + meta.dict_size + " features \u00b7 " +
      meta.dead + " dead (never fired) \u00b7 " + meta.n_tokens + " tokens"}));
    var search = el("input", {type: "search", placeholder: "search id or token", class: "search"});
    var hide = el("input", {type: "checkbox", class: "hide-dead"});
    var info = el("span", {class: "info"});
    var prev = el("button", {text: "\u2190 prev", class: "prev"}), next = el("button", {text: "next \u2192", class: "next"});
    section.appendChild(el("div", {class: "controls"}, [search, el("label", {}, [hide, " hide dead"]), prev, info, next]));
    var headRow = el("tr");
    var table = el("table", {class: "features"}, [el("thead", {}, [headRow])]);
    var body = el("tbody");
    table.appendChild(body);
    section.appendChild(table);
    // Nearest-feature columns come right after the id, so they stay in view when two lists share the width.
    var nearestCols = others.map(function (j) { return {name: "nearest in " + BROWSER_META.saes[j].label + " (cos)", other: j}; });
    var headerCols = [COLUMNS[0]].concat(nearestCols, COLUMNS.slice(1));
    headerCols.forEach(function (col) {
      var th = el("th", {text: col.name});
      if (col.get) th.addEventListener("click", function () {
        state.asc = state.sort === col ? !state.asc : !col.num;
        state.sort = col; state.page = 0; render();
      });
      headRow.appendChild(th);
    });

    function render() {
      var col = state.sort;
      var shown = rows.filter(function (r) { return matches(r, state.query) && !(state.hideDead && r[1] === 0); });
      shown.sort(function (a, b) {
        var x = col.get(a), y = col.get(b);
        var c = x < y ? -1 : x > y ? 1 : a[0] - b[0];
        return state.asc ? c : -c;
      });
      var pages = Math.max(1, Math.ceil(shown.length / PAGE));
      state.page = Math.min(state.page, pages - 1);
      info.textContent = shown.length + " features \u00b7 page " + (state.page + 1) + " / " + pages;
      prev.disabled = state.page === 0; next.disabled = state.page >= pages - 1;
      Array.prototype.forEach.call(headRow.children, function (th, i) {
        th.className = headerCols[i] === state.sort ? "sorted" + (state.asc ? " asc" : "") : "";
      });
      body.textContent = "";
      shown.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (r) {
        var link = el("td", {}, [el("a", {href: featureHref(k, r[0]), text: "#" + r[0]})]);
        if (r[1] === 0) link.appendChild(el("span", {class: "badge", text: "dead"}));
        var nearest = others.map(function (j) {
          var link2 = r[6][String(j)];
          return el("td", {class: "nearest"}, link2 ? [el("a", {href: featureHref(j, link2[0]), text: "#" + link2[0]}),
            " " + link2[1].toFixed(2)] : []);
        });
        var tr = el("tr", {class: r[1] === 0 ? "dead" : "alive", "data-feature": r[0]}, [link].concat(nearest, [
          el("td", {class: "num", text: fmt(r[1])}), el("td", {class: "num", text: fmt(r[2])}),
          el("td", {class: "num", text: fmt(r[3])}),
          el("td", {class: "toks"}, r[4].map(function (id) { return el("span", {class: "tokchip", text: tokenText(id)}); })),
          el("td", {class: "toks"}, r[5].map(function (id) { return el("span", {class: "tokchip", text: tokenText(id)}); }))]));
        body.appendChild(tr);
      });
    }
    search.addEventListener("input", function () { state.query = search.value.trim(); state.page = 0; render(); });
    hide.addEventListener("change", function () { state.hideDead = hide.checked; state.page = 0; render(); });
    prev.addEventListener("click", function () { state.page -= 1; render(); });
    next.addEventListener("click", function () { state.page += 1; render(); });
    render();
    return section;
  }

  function indexPage() {
    document.getElementById("title").textContent = BROWSER_META.title;
    loadIndexes().then(function () {
      var lists = document.getElementById("lists");
      BROWSER_META.saes.forEach(function (_, k) { lists.appendChild(listPanel(k)); });
      document.body.setAttribute("data-ready", "1");
    });
  }

  // ------------------------------------------------------------------ feature page
  function addShard(k, shard, details) {
    var key = k + "/" + shard;
    shards[key] = details;
    (shardWaiters[key] || []).forEach(function (resolve) { resolve(details); });
  }

  function loadDetail(k, f) {
    var shard = Math.floor(f / BROWSER_META.saes[k].shard), key = k + "/" + shard;
    var pick = function (details) { return details[f - shard * BROWSER_META.saes[k].shard]; };
    if (shards[key]) return Promise.resolve(pick(shards[key]));
    var waiting = new Promise(function (resolve) { (shardWaiters[key] = shardWaiters[key] || []).push(resolve); });
    return loadScript("data/sae" + k + "/shard-" + shard + ".js").then(function () { return waiting; }).then(pick);
  }

  function histogram(counts, range) {
    var w = 360, h = 90, n = counts.length, max = Math.max.apply(null, counts.concat([1]));
    var ns = "http://www.w3.org/2000/svg";
    var svg = document.createElementNS(ns, "svg");
    svg.setAttribute("class", "hist"); svg.setAttribute("width", w); svg.setAttribute("height", h + 14);
    counts.forEach(function (c, i) {
      var r = document.createElementNS(ns, "rect"), bh = c / max * h;
      r.setAttribute("x", i * w / n); r.setAttribute("y", h - bh);
      r.setAttribute("width", Math.max(w / n - 1, 1)); r.setAttribute("height", bh);
      svg.appendChild(r);
    });
    for (var e = Math.ceil(range[0]); e <= range[1]; e++) {
      var t = document.createElementNS(ns, "text");
      t.setAttribute("x", (e - range[0]) / (range[1] - range[0]) * w); t.setAttribute("y", h + 12);
      t.textContent = "1e" + e; svg.appendChild(t);
    }
    return svg;
  }

  // ctx = [token ids, activations in thousandths of the feature's top activation `top`, index of the activating token]
  function contextLine(ctx, top) {
    var line = el("div", {class: "ctx"}, [el("span", {class: "ctxval", text: fmt(ctx[1][ctx[2]] * top / 1000)})]);
    ctx[0].forEach(function (id, i) {
      var a = ctx[1][i] * top / 1000, alpha = Math.min(1, ctx[1][i] / 1000);
      var span = el("span", {class: "tok" + (i === ctx[2] ? " max" : ""), title: "activation " + fmt(a), text: tokenText(id)});
      span.setAttribute("data-act", a);
      if (a > 0) span.style.backgroundColor = "rgba(255, 128, 0, " + alpha.toFixed(3) + ")";
      line.appendChild(span);
    });
    return line;
  }

  function logitList(title, pair) {
    return el("div", {}, [el("h4", {text: title}), el("ol", {}, pair[0].map(function (id, i) {
      return el("li", {}, [el("span", {class: "tokchip", text: tokenText(id)}), " " + fmt(pair[1][i])]);
    }))]);
  }

  function featurePanel(k, f, detail, note) {
    var meta = BROWSER_META.saes[k], row = BROWSER_INDEX[k][f];
    var section = el("section", {class: "feature", "data-sae": k, "data-feature": f});
    var head = el("h2", {}, [meta.label + " \u00b7 feature #" + f]);
    if (row[1] === 0) head.appendChild(el("span", {class: "badge", text: "dead"}));
    section.appendChild(head);
    if (note) section.appendChild(el("p", {class: "sub", text: note}));
    section.appendChild(el("table", {class: "stats"}, [
      el("tr", {}, [el("td", {text: "density"}), el("td", {text: fmt(row[1])})]),
      el("tr", {}, [el("td", {text: "mean activation (when firing)"}), el("td", {text: fmt(row[2])})]),
      el("tr", {}, [el("td", {text: "max activation"}), el("td", {text: fmt(row[3])})])]));
    BROWSER_META.saes.forEach(function (other, j) {
      var link = row[6][String(j)];
      if (j !== k && link) section.appendChild(el("p", {}, ["Nearest in " + other.label + ": ",
        el("a", {href: featureHref(j, link[0]), text: "#" + link[0]}), " (decoder cosine " + link[1].toFixed(3) + ")"]));
    });
    section.appendChild(el("h3", {text: "Activation histogram (log10 scale, firing tokens)"}));
    section.appendChild(histogram(detail.h, meta.hist_range));
    if (detail.lt) {
      section.appendChild(el("h3", {text: "Direct logit effect"}));
      section.appendChild(el("div", {class: "logits"}, [logitList("promoted", detail.lt), logitList("suppressed", detail.lb)]));
    }
    section.appendChild(el("h3", {text: "Top activating contexts"}));
    if (!detail.c.length) section.appendChild(el("p", {class: "sub", text: "Never fired on the evaluated tokens."}));
    detail.c.forEach(function (ctx) { section.appendChild(contextLine(ctx, detail.m)); });  // strongest = full colour
    return section;
  }

  function parseHash() {
    var params = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (p) {
      var kv = p.split("="); if (kv[0]) params[kv[0]] = Number(kv[1]);
    });
    return {k: params.sae || 0, f: params.f || 0};
  }

  function renderFeature() {
    var target = parseHash(), main = document.getElementById("features");
    var meta = BROWSER_META.saes[target.k];
    if (!meta || !(target.f >= 0 && target.f < meta.dict_size)) {
      main.textContent = "No such feature.";
      return Promise.resolve();
    }
    document.title = meta.label + " feature #" + target.f;
    document.getElementById("title").textContent = meta.label + " \u00b7 " + meta.site + " \u00b7 feature #" + target.f;
    var row = BROWSER_INDEX[target.k][target.f];
    var shown = [[target.k, target.f, ""]];
    BROWSER_META.saes.forEach(function (other, j) {
      var link = row[6][String(j)];
      if (j !== target.k && link) shown.push([j, link[0], "nearest to " + meta.label + " #" + target.f +
        " (decoder cosine " + link[1].toFixed(3) + ")"]);
    });
    return Promise.all(shown.map(function (s) { return loadDetail(s[0], s[1]); })).then(function (details) {
      main.textContent = "";
      details.forEach(function (d, i) { main.appendChild(featurePanel(shown[i][0], shown[i][1], d, shown[i][2])); });
      document.body.setAttribute("data-ready", "1");
    });
  }

  function featurePage() {
    loadIndexes().then(renderFeature);
    window.addEventListener("hashchange", function () {
      document.body.removeAttribute("data-ready");
      renderFeature();
    });
  }

  return {indexPage: indexPage, featurePage: featurePage, addShard: addShard};
})();
