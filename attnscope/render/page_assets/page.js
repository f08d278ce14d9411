/* attnscope page: tokens, pickers, a zoomable heatmap and a layer × head grid.
 *
 * Reads its data from the JSON element #attnscope-data (see attnscope/render/page.py),
 * decodes one head at a time on demand (base64 little-endian float32), and never asks
 * the network for anything. Heads are kept in a small cache bounded in bytes; a dense
 * head gets a pyramid of 2 × 2 pooled levels (max or sum) so that a heatmap of 8,192
 * tokens draws from at most 3 × 3 cells per pixel. Top-k pages draw by scattering each
 * row's k entries. Any error is written into #attnscope-errors, so a headless browser's
 * dumped DOM shows it. A signed layer (D.signed_layers: a linear layer's hidden attention,
 * rows not summing to 1) is drawn on a diverging scale (blue below 0, red above, up to its
 * head's largest |weight|), pooled and ranked by |weight|, the sign kept.
 * Where the keys are another sequence (D.key_tokens: an encoder-decoder's cross-attention,
 * rows = the decoder's inputs, columns = the source) each matrix is n × nk, the key tokens
 * get a row of their own (#keys) above the query row, shaded by where the chosen query
 * looks, and the query row is shaded by what reads the chosen key (its column).
 */
(function () {
  "use strict";

  var errorsEl = document.getElementById("attnscope-errors");
  function report(message) {
    errorsEl.textContent += String(message) + "\n";
  }
  window.addEventListener("error", function (e) {
    report("error: " + (e.error && e.error.stack ? e.error.stack : e.message));
  });
  window.addEventListener("unhandledrejection", function (e) {
    report("error: " + e.reason);
  });

  var VIRIDIS = ["#440154", "#48186a", "#472d7b", "#424086", "#3b528b", "#33638d", "#2c728e", "#26828e", "#21918c",
    "#1fa088", "#28ae80", "#3fbc73", "#5ec962", "#84d44b", "#addc30", "#d8e219", "#fde725"];
  var MONO = '11px ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace';
  var CACHE_BYTES = 640 * 1048576;
  var LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;

  try {
    main();
  } catch (err) {
    report("error: " + (err && err.stack ? err.stack : err));
  }

  function main() {
    var t0 = performance.now(), dataEl = document.getElementById("attnscope-data");
    var D = JSON.parse(dataEl.textContent);
    // The parsed copy is all the page uses: let the text go (at 8,192 tokens it is 342 MiB).
    dataEl.textContent = "";
    var tParsed = performance.now();
    var n = D.n, sparse = !!D.topk, K = D.k || 0;
    var keyed = !!D.key_tokens, nk = keyed ? D.n_keys : n;  // rows n (queries) × columns nk (keys)
    var layers = D.layers, heads = D.heads, rollout = D.measure === "rollout";
    var labels = D.tokens, keyLabels = keyed ? D.key_tokens : D.tokens;
    var LUT = buildLut();
    var signedLayers = D.signed_layers || [], kinds = D.layer_kinds || {};
    function isSigned(li) { return signedLayers.indexOf(layers[li]) >= 0; }
    // which of two values a "max" pool or a ranking keeps: on a signed head, the larger |value|
    function more(v, than, signed) { return signed ? Math.abs(v) > Math.abs(than) : v > than; }

    var S = {
      li: Math.max(0, layers.indexOf(D.initial.layer)),
      hi: Math.max(0, heads.indexOf(D.initial.head)),
      pinned: D.initial.token >= 0 && D.initial.token < n ? D.initial.token : null,
      hover: null,
      keyPinned: null,  // a keyed page's chosen key token (a column), apart from the query
      keyHover: null,
      dir: "row",
      pool: "max",
      scale: "linear",
      r0: 0, c0: 0, rspan: n, cspan: nk
    };
    if (layers.indexOf(D.initial.layer) < 0) S.li = layers.length - 1;

    // ------------------------------------------------------------------ decoding
    function bytesOf(b64) {
      if (typeof Uint8Array.fromBase64 === "function") return Uint8Array.fromBase64(b64);
      var bin = atob(b64), out = new Uint8Array(bin.length);
      for (var i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
      return out;
    }
    function words(b64, Type) {
      var b = bytesOf(b64);
      if (!LITTLE) {
        for (var i = 0; i < b.length; i += 4) {
          var t = b[i]; b[i] = b[i + 3]; b[i + 3] = t; t = b[i + 1]; b[i + 1] = b[i + 2]; b[i + 2] = t;
        }
      }
      return new Type(b.buffer, b.byteOffset, b.byteLength / 4);
    }

    var cache = new Map(), cacheBytes = 0;
    function getHead(li, hi) {
      var key = li + "," + hi, h = cache.get(key);
      if (h) {
        cache.delete(key);
        cache.set(key, h);
        return h;
      }
      if (D.layer_heads && heads[hi] >= D.layer_heads[li]) {
        // a head this layer lacks (its layers differ in head count): stored as NaN / -1, drawn empty
        h = sparse ? { key: key, idx: new Int32Array(n * K), w: new Float32Array(n * K) }
                   : { key: key, data: new Float32Array(n * nk), levels: {} };
        h.bytes = sparse ? 8 * n * K : 4 * n * nk;
      } else if (sparse) {
        h = { key: key, idx: words(D.topk.indices[li][hi], Int32Array), w: words(D.topk.weights[li][hi], Float32Array) };
        h.bytes = 8 * n * K;
      } else {
        h = { key: key, data: words(D.attention[li][hi], Float32Array), levels: {} };
        h.bytes = 4 * n * nk;
      }
      h.signed = isSigned(li);
      h.scale = 0;  // a signed head's largest |weight|: the ends of its diverging scale
      if (h.signed) {
        var vals = sparse ? h.w : h.data;
        for (var e = 0; e < vals.length; e++) if (Math.abs(vals[e]) > h.scale) h.scale = Math.abs(vals[e]);
      }
      cache.set(key, h);
      cacheBytes += h.bytes;
      evict(key);
      return h;
    }
    function grow(h, bytes) {
      h.bytes += bytes;
      cacheBytes += bytes;
    }
    function evict(keep) {
      var current = S.li + "," + S.hi;
      for (var it = cache.keys(), k = it.next(); cacheBytes > CACHE_BYTES && !k.done; k = it.next()) {
        if (k.value === keep || k.value === current) continue;
        cacheBytes -= cache.get(k.value).bytes;
        cache.delete(k.value);
      }
    }

    // ------------------------------------------------------------------ reading a head
    function row(h, i) {
      if (!sparse) return h.data.subarray(i * nk, (i + 1) * nk);
      var out = new Float32Array(nk);
      // an entry of weight 0 is a key the query cannot see (masked): never drawn or listed
      for (var e = i * K; e < (i + 1) * K; e++) {
        if (h.signed ? more(h.w[e], out[h.idx[e]], true) : h.w[e] > out[h.idx[e]]) out[h.idx[e]] = h.w[e];
      }
      return out;
    }
    function col(h, j) {
      var out = new Float32Array(n), i, e;
      if (!sparse) {
        for (i = 0; i < n; i++) out[i] = h.data[i * nk + j];
      } else {
        for (i = 0; i < n; i++) for (e = i * K; e < (i + 1) * K; e++) if (h.idx[e] === j) out[i] = h.w[e];
      }
      return out;
    }
    function value(h, i, j) {
      if (!sparse) return h.data[i * nk + j];
      for (var e = i * K; e < (i + 1) * K; e++) if (h.idx[e] === j) return h.w[e];
      return 0;
    }
    // The `count` largest non-zero entries, largest first (by |value| where `signed`); ties
    // keep the lower index first.
    function top(arr, count, signed) {
      var best = [];
      for (var j = 0; j < arr.length; j++) {
        var v = arr[j];
        if ((signed ? v === 0 : !(v > 0)) || (best.length === count && !more(v, best[best.length - 1][1], signed))) continue;
        var at = best.length;
        while (at > 0 && more(v, best[at - 1][1], signed)) at--;
        best.splice(at, 0, [j, v]);
        if (best.length > count) best.pop();
      }
      return best;
    }

    // ------------------------------------------------------------------ pooling
    // Level l holds ceil(n / 2^l) × ceil(nk / 2^l) cells, each the max (or the sum) of its 2^l × 2^l block.
    function levels(h, pool) {
      if (h.levels[pool]) return h.levels[pool];
      var arrs = [h.data], dims = [[n, nk]], m = n, mc = nk, cur = h.data, added = 0, sg = h.signed;
      while (Math.max(m, mc) > 16) {
        var m2 = (m + 1) >> 1, mc2 = (mc + 1) >> 1, next = new Float32Array(m2 * mc2);
        for (var y = 0; y < m2; y++) {
          var ya = 2 * y * mc, yb = 2 * y + 1 < m ? ya + mc : -1;
          for (var x = 0; x < mc2; x++) {
            var xa = 2 * x, xb = xa + 1 < mc, a = cur[ya + xa], v;
            if (pool === "max") {
              v = a;
              if (xb && more(cur[ya + xa + 1], v, sg)) v = cur[ya + xa + 1];
              if (yb >= 0) {
                if (more(cur[yb + xa], v, sg)) v = cur[yb + xa];
                if (xb && more(cur[yb + xa + 1], v, sg)) v = cur[yb + xa + 1];
              }
            } else {
              v = a + (xb ? cur[ya + xa + 1] : 0);
              if (yb >= 0) v += cur[yb + xa] + (xb ? cur[yb + xa + 1] : 0);
            }
            next[y * mc2 + x] = v;
          }
        }
        arrs.push(next);
        dims.push([m2, mc2]);
        added += next.byteLength;
        cur = next;
        m = m2;
        mc = mc2;
      }
      h.levels[pool] = { arrs: arrs, dims: dims };
      grow(h, added);
      return h.levels[pool];
    }

    // Token bounds of g cells over [start, start + span): cell t covers [b[t], b[t + 1]).
    function bounds(start, span, g) {
      var b = new Int32Array(g + 1);
      for (var t = 0; t <= g; t++) b[t] = start + Math.floor((t * span) / g);
      return b;
    }

    // A gr × gc grid of pooled values over the view (r0, c0, rspan × cspan) of one head.
    function pooled(h, r0, c0, rspan, cspan, gr, gc, pool) {
      var out = new Float32Array(gr * gc), rb = bounds(r0, rspan, gr), cb = bounds(c0, cspan, gc);
      var gy, gx, r, c, e, v, t;
      if (sparse) {
        var rowT = new Int32Array(rspan), colT = new Int32Array(cspan);
        for (gy = 0; gy < gr; gy++) for (r = rb[gy]; r < rb[gy + 1]; r++) rowT[r - r0] = gy;
        for (gx = 0; gx < gc; gx++) for (c = cb[gx]; c < cb[gx + 1]; c++) colT[c - c0] = gx;
        for (r = r0; r < r0 + rspan; r++) {
          var base = rowT[r - r0] * gc;
          for (e = r * K; e < (r + 1) * K; e++) {
            c = h.idx[e] - c0;
            v = h.w[e];
            if (c < 0 || c >= cspan || (h.signed ? v === 0 : !(v > 0))) continue;
            if (pool === "max") { if (more(v, out[base + colT[c]], h.signed)) out[base + colT[c]] = v; }
            else out[base + colT[c]] += v;
          }
        }
        if (pool === "mean") {
          for (gy = 0; gy < gr; gy++) for (gx = 0; gx < gc; gx++) {
            out[gy * gc + gx] /= (rb[gy + 1] - rb[gy]) * (cb[gx + 1] - cb[gx]);
          }
        }
        return out;
      }
      var per = Math.min(rspan / gr, cspan / gc), lvl = 0;
      var P = per >= 2 ? levels(h, pool) : { arrs: [h.data], dims: [[n, nk]] };
      while (lvl + 1 < P.arrs.length && (2 << lvl) <= per) lvl++;
      var arr = P.arrs[lvl], m = P.dims[lvl][1], s = 1 << lvl;
      var ry0 = new Int32Array(gr), ry1 = new Int32Array(gr), cx0 = new Int32Array(gc), cx1 = new Int32Array(gc);
      var rn = new Float64Array(gr), cn = new Float64Array(gc);
      for (t = 0; t < gr; t++) {
        ry0[t] = rb[t] >> lvl; ry1[t] = ((rb[t + 1] - 1) >> lvl) + 1;
        rn[t] = Math.min(ry1[t] * s, n) - ry0[t] * s;
      }
      for (t = 0; t < gc; t++) {
        cx0[t] = cb[t] >> lvl; cx1[t] = ((cb[t + 1] - 1) >> lvl) + 1;
        cn[t] = Math.min(cx1[t] * s, nk) - cx0[t] * s;
      }
      for (gy = 0; gy < gr; gy++) {
        for (gx = 0; gx < gc; gx++) {
          var acc = pool === "max" && !h.signed ? -Infinity : 0;
          for (r = ry0[gy]; r < ry1[gy]; r++) {
            var o = r * m;
            for (c = cx0[gx]; c < cx1[gx]; c++) {
              v = arr[o + c];
              if (pool === "max") { if (more(v, acc, h.signed)) acc = v; } else acc += v;
            }
          }
          out[gy * gc + gx] = pool === "max" ? acc : acc / (rn[gy] * cn[gx]);
        }
      }
      return out;
    }

    // ------------------------------------------------------------------ colour
    function buildLut() {
      var lut = new Uint8Array(256 * 3), stops = VIRIDIS.map(function (hex) {
        return [parseInt(hex.slice(1, 3), 16), parseInt(hex.slice(3, 5), 16), parseInt(hex.slice(5, 7), 16)];
      });
      for (var i = 0; i < 256; i++) {
        var x = (i / 255) * (stops.length - 1), a = Math.min(stops.length - 2, Math.floor(x)), f = x - a;
        for (var ch = 0; ch < 3; ch++) lut[3 * i + ch] = Math.round(stops[a][ch] * (1 - f) + stops[a + 1][ch] * f);
      }
      return lut;
    }
    function scaled(v) {
      if (!(v > 0)) return 0;
      var x = S.scale === "sqrt" ? Math.sqrt(v) : S.scale === "log" ? (Math.log10(v) + 4) / 4 : v;
      return x < 0 ? 0 : x > 1 ? 1 : x;
    }
    // The diverging scale of a signed head: light at 0, blue towards −scale, red towards +scale.
    var MID = [247, 247, 247], NEG = [33, 102, 172], POS = [178, 24, 43];
    function diverging(v, scale, out, at) {
      var t = scale > 0 ? scaled(Math.abs(v) / scale) : 0, end = v < 0 ? NEG : POS;
      for (var ch = 0; ch < 3; ch++) out[at + ch] = Math.round(MID[ch] * (1 - t) + end[ch] * t);
    }
    function paint(grid, gr, gc, target, h) {
      target.width = gc;
      target.height = gr;
      var ctx = target.getContext("2d"), img = ctx.createImageData(gc, gr), px = img.data;
      for (var p = 0; p < gr * gc; p++) {
        if (h && h.signed) {
          diverging(grid[p], h.scale, px, 4 * p);
        } else {
          var i = Math.round(scaled(grid[p]) * 255) * 3;
          px[4 * p] = LUT[i]; px[4 * p + 1] = LUT[i + 1]; px[4 * p + 2] = LUT[i + 2];
        }
        px[4 * p + 3] = 255;
      }
      ctx.putImageData(img, 0, 0);
    }

    // ------------------------------------------------------------------ elements
    var $ = function (id) { return document.getElementById(id); };
    var tokEls = Array.prototype.slice.call($("tokens").querySelectorAll(".tok"));
    var keyEls = keyed ? Array.prototype.slice.call($("keys").querySelectorAll(".tok")) : [];
    var shade = new Int8Array(n).fill(-1), keyShade = new Int8Array(nk).fill(-1);
    var heat = $("heatmap"), tip = $("tip"), off = document.createElement("canvas");
    var layerPick = $("layer-picker"), headPick = $("head-picker");
    layers.forEach(function (l, i) { layerPick.add(new Option(String(l), String(i))); });
    heads.forEach(function (hd, i) { headPick.add(new Option(rollout ? "rollout" : String(hd), String(i))); });
    if (rollout) headPick.disabled = true;

    function query() { return S.hover !== null ? S.hover : S.pinned; }
    // The key whose column is shown: on a keyed page its own choice, else the query token itself.
    function keyOf() { return keyed ? (S.keyHover !== null ? S.keyHover : S.keyPinned) : query(); }
    function clip(s, w) { return s.length <= w ? s : s.slice(0, w - 1) + "…"; }

    // ------------------------------------------------------------------ the side panel and tokens
    function showSelection() {
      var q = query(), h = getHead(S.li, S.hi), sel = $("selection");
      sel.dataset.layer = layers[S.li];
      sel.dataset.head = rollout ? "" : heads[S.hi];
      sel.dataset.token = q === null ? "" : q;
      sel.dataset.pinned = S.pinned === null ? "" : S.pinned;
      var kq = keyOf();
      sel.dataset.key = keyed && kq !== null ? kq : "";
      sel.textContent = "layer " + layers[S.li] + " · " + (rollout ? "rollout" : "head " + heads[S.hi]) + " · " +
        (q === null ? "no token (hover or tap one)" : (keyed ? "target token " : "token ") + q + " " + labels[q]) +
        (keyed && kq !== null ? " · source token " + kq + " " + keyLabels[kq] : "");
      layerPick.value = String(S.li);
      headPick.value = String(S.hi);
      $("dir-row").classList.toggle("on", S.dir === "row");
      $("dir-col").classList.toggle("on", S.dir === "col");
      var keys = q === null ? null : row(h, q), queries = kq === null ? null : col(h, kq);
      fillList($("top-keys"), keys ? top(keys, 8, h.signed) : [], keyLabels);
      fillList($("top-queries"), queries ? top(queries, 8, h.signed) : [], labels);
      if (keyed) {  // each row shaded by the other's choice: the source by where the target token looks
        shadeRow(keyEls, keyShade, keys, h);
        shadeRow(tokEls, shade, queries, h);
        keyEls.forEach(function (el, j) {
          el.classList.toggle("focus", j === kq);
          el.classList.toggle("pinned", j === S.keyPinned);
        });
        drawLinks(q, keys, kq, queries);
      } else {
        shadeRow(tokEls, shade, q === null ? null : S.dir === "row" ? keys : queries, h);
      }
      tokEls.forEach(function (el, j) {
        el.classList.toggle("focus", j === q);
        el.classList.toggle("pinned", j === S.pinned);
      });
    }
    // A keyed page's lines between its two rows (after bertviz's head view): from the chosen
    // target token up to the source tokens it reads, from the chosen source token down to the
    // target tokens that read it, each as thick and opaque as its weight (the LINES strongest,
    // down to 2% of the strongest; tokens scrolled out of their row get none).
    var LINES = 64, links = null;
    if (keyed) {
      links = document.createElement("canvas");
      links.id = "links";
      $("main").appendChild(links);
      ["keys", "tokens"].forEach(function (id) { $(id).addEventListener("scroll", function () { redraw(); }); });
    }
    function drawLinks(q, keys, kq, queries) {
      var main = $("main"), mr = main.getBoundingClientRect(), ks = $("keys"), ts = $("tokens");
      var kr = ks.getBoundingClientRect(), tr = ts.getBoundingClientRect(), dpr = window.devicePixelRatio || 1;
      var y0 = kr.top - mr.top + main.scrollTop, w = main.clientWidth, h = Math.max(1, tr.bottom - kr.top);
      links.style.top = y0 + "px";
      links.style.width = w + "px";
      links.style.height = h + "px";
      links.width = Math.round(w * dpr);
      links.height = Math.round(h * dpr);
      var ctx = links.getContext("2d"), drawn = 0;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, h);
      function end(el, box, atTop) {  // where a line meets a token: the edge facing the other row
        var r = el.getBoundingClientRect();
        if (r.bottom <= box.top || r.top >= box.bottom) return null;
        return [r.left + r.width / 2 - mr.left + main.scrollLeft, (atTop ? r.top : r.bottom) - kr.top];
      }
      function fan(from, fromBox, fromTop, weights, toEls, toBox, rgb) {
        var a = end(from, fromBox, fromTop);
        if (!a) return;
        var best = top(weights, LINES, false);
        if (!best.length) return;
        var most = best[0][1];
        best.forEach(function (jv) {
          var b = jv[1] >= 0.02 * most ? end(toEls[jv[0]], toBox, !fromTop) : null;
          if (!b) return;
          var t = jv[1] / most;
          ctx.strokeStyle = "rgba(" + rgb + ", " + (0.15 + 0.75 * t).toFixed(3) + ")";
          ctx.lineWidth = 0.5 + 3 * t;
          ctx.beginPath();
          ctx.moveTo(a[0], a[1]);
          ctx.bezierCurveTo(a[0], (a[1] + b[1]) / 2, b[0], (a[1] + b[1]) / 2, b[0], b[1]);
          ctx.stroke();
          drawn++;
        });
      }
      if (q !== null) fan(tokEls[q], tr, true, keys, keyEls, kr, "255, 140, 0");
      if (kq !== null) fan(keyEls[kq], kr, false, queries, tokEls, tr, "47, 111, 214");
      links.dataset.lines = drawn;
    }
    function shadeRow(els, levels, shown, h) {
      for (var j = 0; j < els.length; j++) {
        var level = shown ? Math.round(scaled(h.signed ? Math.abs(shown[j]) / (h.scale || 1) : shown[j]) * 20) : 0;
        if (level !== levels[j]) {
          levels[j] = level;
          els[j].style.backgroundColor = level ? "rgba(255, 140, 0, " + (0.08 + 0.04 * level).toFixed(2) + ")" : "";
        }
        // a keyed page's rows are two short texts: each token carries its weight, shown on hover
        if (keyed) els[j].dataset.weight = els[j].title = shown ? String(shown[j]) : "";
      }
    }
    function fillList(ol, best, labels) {
      ol.textContent = "";
      best.forEach(function (jv) {
        var li = document.createElement("li"), w = document.createElement("span");
        li.dataset.key = jv[0];
        li.dataset.weight = String(jv[1]);
        li.title = labels[jv[0]] + " (token " + jv[0] + "): " + jv[1];
        w.className = "w";
        w.textContent = jv[1].toFixed(3);
        li.appendChild(w);
        li.appendChild(document.createTextNode(clip(labels[jv[0]], 12) + " " + jv[0]));
        ol.appendChild(li);
      });
      if (!best.length) {
        var none = document.createElement("li");
        none.className = "dim";
        none.textContent = (ol.id === "top-keys" ? query() : keyOf()) === null ? "–" : "nothing stored";
        ol.appendChild(none);
      }
    }

    // ------------------------------------------------------------------ the heatmap
    var geo = { w: 300, h: 280, ml: 112, mt: 92, pw: 180, ph: 180, dpr: 1 };
    var lastGrid = null;
    function layout() {
      var main = $("main"), gridWrap = $("grid-wrap");
      var avail = main.clientWidth - 30, gw = gridWrap.offsetWidth || 0;
      var top = $("views").getBoundingClientRect().top;
      var side = avail - gw - 40 >= 320 ? avail - gw - 40 : avail;  // beside the grid where it fits, else above it
      var size = Math.max(300, Math.min(1000, side, window.innerHeight - top - 36));
      geo.dpr = window.devicePixelRatio || 1;
      var plot = Math.floor(size) - geo.ml - 8, ratio = n / nk;
      // the longer side takes the plot; the shorter keeps its share, at least a quarter
      geo.pw = Math.round(plot * Math.max(0.25, Math.min(1, 1 / ratio)));
      geo.ph = Math.round(plot * Math.max(0.25, Math.min(1, ratio)));
      geo.w = geo.ml + geo.pw + 8;
      geo.h = geo.mt + geo.ph + 8;
      heat.style.width = geo.w + "px";
      heat.style.height = geo.h + "px";
      heat.width = Math.round(geo.w * geo.dpr);
      heat.height = Math.round(geo.h * geo.dpr);
    }
    function niceStride(minimum) {
      var s = 1;
      while (s < minimum) s = s * (String(s)[0] === "2" ? 2.5 : 2);
      return Math.round(s);
    }
    function drawHeat() {
      var h = getHead(S.li, S.hi), ctx = heat.getContext("2d"), dpr = geo.dpr, PW = geo.pw, PH = geo.ph;
      var ml = geo.ml, mt = geo.mt, rspan = S.rspan, cspan = S.cspan, r0 = S.r0, c0 = S.c0;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, geo.w, geo.h);
      var gr = Math.max(1, Math.min(rspan, Math.round(PH * dpr))), gc = Math.max(1, Math.min(cspan, Math.round(PW * dpr)));
      var grid = pooled(h, r0, c0, rspan, cspan, gr, gc, S.pool);
      lastGrid = { grid: grid, gr: gr, gc: gc };
      paint(grid, gr, gc, off, h);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(off, ml, mt, PW, PH);
      if (!sparse) hatchMasked(grid, gr, gc, ctx, ml, mt, PW, PH);
      var cellH = PH / rspan, cellW = PW / cspan, cell = Math.min(cellH, cellW);
      var rstride = cellH >= 9 ? 1 : niceStride(14 / cellH), cstride = cellW >= 9 ? 1 : niceStride(14 / cellW);
      var font = Math.max(8, Math.min(12, Math.floor(cell) - 1));
      ctx.fillStyle = "#1d1f24";
      ctx.font = rstride === 1 && cstride === 1 ? MONO.replace("11px", font + "px") : MONO;
      ctx.textBaseline = "middle";
      ctx.textAlign = "right";
      var i, text;
      for (i = Math.ceil(r0 / rstride) * rstride; i < r0 + rspan; i += rstride) {
        text = rstride === 1 ? clip(labels[i], 14) : i + " " + clip(labels[i], 8);
        ctx.fillText(text, ml - 4, mt + (i - r0 + 0.5) * cellH);
      }
      ctx.textAlign = "left";
      for (i = Math.ceil(c0 / cstride) * cstride; i < c0 + cspan; i += cstride) {
        text = cstride === 1 ? clip(keyLabels[i], 12) : i + " " + clip(keyLabels[i], 6);
        ctx.save();
        ctx.translate(ml + (i - c0 + 0.5) * cellW, mt - 4);
        ctx.rotate(-Math.PI / 2);
        ctx.fillText(text, 0, 0);
        ctx.restore();
      }
      ctx.fillStyle = "#6b7080";
      ctx.font = MONO;
      ctx.textAlign = "left";
      ctx.fillText(keyed ? "source →" : "key →", 4, 10);
      ctx.fillText(keyed ? "target ↓" : "query ↓", 4, 24);
      var q = query(), kq = keyOf();
      ctx.strokeStyle = "rgba(214, 51, 108, 0.9)";
      ctx.lineWidth = 1.5;
      var bandH = Math.max(cellH, 2), bandW = Math.max(cellW, 2);
      if (q !== null && q >= r0 && q < r0 + rspan) ctx.strokeRect(ml, mt + (q - r0) * cellH + (cellH - bandH) / 2, PW, bandH);
      if (kq !== null && kq >= c0 && kq < c0 + cspan) ctx.strokeRect(ml + (kq - c0) * cellW + (cellW - bandW) / 2, mt, bandW, PH);
      ctx.strokeStyle = "#d9dbe3";
      ctx.lineWidth = 1;
      ctx.strokeRect(ml - 1.5, mt - 1.5, PW + 3, PH + 3);  // outside the cells: the first row and column stay visible
      $("heat-title").textContent = "layer " + layers[S.li] + " · " + (rollout ? "rollout" : "head " + heads[S.hi]) +
        (keyed ? " · row = target token, column = source token" : " · row = query, column = key") +
        (sparse ? " · top-" + K + " only" : "") +
        (h.signed ? " · " + (kinds[layers[S.li]] || "not row-stochastic") + ": hidden attention, signed, rows do not sum to 1" : "");
      var per = Math.max(rspan / gr, cspan / gc);
      $("heat-range").textContent = "tokens " + r0 + "–" + (r0 + rspan - 1) + " × " + c0 + "–" + (c0 + cspan - 1) +
        (per > 1 ? " · " + per.toFixed(1) + " tokens per pixel, " + S.pool + " pooled" : "");
      drawLegend();
    }
    // Cells of exactly 0 are keys the mask hides (softmax of -inf): hatch them, so that they
    // read apart from weights merely near 0, which share the scale's darkest colour.
    var maskCanvas = document.createElement("canvas"), hatchCanvas = document.createElement("canvas");
    function hatchMasked(grid, gr, gc, ctx, x, y, PW, PH) {
      var dpr = geo.dpr, any = false, p;
      for (p = 0; p < gr * gc && !any; p++) any = grid[p] === 0;
      if (!any) return;
      maskCanvas.width = gc;
      maskCanvas.height = gr;
      var mctx = maskCanvas.getContext("2d"), img = mctx.createImageData(gc, gr), px = img.data;
      for (p = 0; p < gr * gc; p++) px[4 * p + 3] = grid[p] === 0 ? 255 : 0;
      mctx.putImageData(img, 0, 0);
      var sw = Math.round(PW * dpr), sh = Math.round(PH * dpr), side = Math.max(sw, sh);
      hatchCanvas.width = sw;
      hatchCanvas.height = sh;
      var hctx = hatchCanvas.getContext("2d");
      hctx.strokeStyle = "rgba(255, 255, 255, 0.45)";
      hctx.lineWidth = Math.max(1, dpr);
      hctx.beginPath();
      for (var d = -side; d < side; d += 6 * dpr) { hctx.moveTo(d, sh); hctx.lineTo(d + sh, 0); }
      hctx.stroke();
      hctx.globalCompositeOperation = "destination-in";
      hctx.imageSmoothingEnabled = false;
      hctx.drawImage(maskCanvas, 0, 0, sw, sh);
      ctx.drawImage(hatchCanvas, x, y, PW, PH);
    }
    function drawLegend() {
      var c = $("legend"), dpr = geo.dpr, w = 260, hgt = 34, ctx = c.getContext("2d");
      c.width = w * dpr;
      c.height = hgt * dpr;
      ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
      ctx.clearRect(0, 0, w, hgt);
      var h = getHead(S.li, S.hi);
      if (h.signed) return drawSignedLegend(ctx, w, h.scale);
      for (var x = 0; x < w - 16; x++) {
        var i = Math.round((x / (w - 17)) * 255) * 3;
        ctx.fillStyle = "rgb(" + LUT[i] + "," + LUT[i + 1] + "," + LUT[i + 2] + ")";
        ctx.fillRect(8 + x, 2, 1, 14);
      }
      var ticks = S.scale === "log" ? [1e-4, 1e-3, 1e-2, 0.1, 1] : S.scale === "sqrt" ? [0, 0.01, 0.1, 0.25, 0.5, 1] : [0, 0.25, 0.5, 0.75, 1];
      ctx.fillStyle = "#6b7080";
      ctx.font = MONO;
      ctx.textBaseline = "top";
      ticks.forEach(function (t, k) {
        var x = 8 + (S.scale === "log" ? (Math.log10(t) + 4) / 4 : scaled(t)) * (w - 17);
        ctx.textAlign = k === 0 ? "left" : k === ticks.length - 1 ? "right" : "center";
        ctx.fillRect(x, 16, 1, 3);
        ctx.fillText(t >= 0.01 || t === 0 ? String(t) : t.toExponential(0), x, 20);
      });
      $("legend-note").textContent = sparse
        ? "only each token's top " + K + " keys are stored: every other cell reads 0"
        : "hatched: exactly 0, a key the mask hides; darkest: a weight near 0";
    }
    function drawSignedLegend(ctx, w, scale) {
      var rgb = [0, 0, 0];
      for (var x = 0; x < w - 16; x++) {
        diverging(((x / (w - 17)) * 2 - 1) * scale, scale, rgb, 0);
        ctx.fillStyle = "rgb(" + rgb[0] + "," + rgb[1] + "," + rgb[2] + ")";
        ctx.fillRect(8 + x, 2, 1, 14);
      }
      ctx.fillStyle = "#6b7080";
      ctx.font = MONO;
      ctx.textBaseline = "top";
      [-scale, 0, scale].forEach(function (t, k) {
        var x = 8 + (k / 2) * (w - 17);
        ctx.textAlign = k === 0 ? "left" : k === 2 ? "right" : "center";
        ctx.fillRect(x, 16, 1, 3);
        ctx.fillText(t === 0 ? "0" : t.toPrecision(3), x, 20);
      });
      $("legend-note").textContent = "signed: blue below 0, red above, to ±the head's largest |weight|; rows do not " +
        "sum to 1" + (sparse ? "; only each token's top " + K + " keys (by |weight|) are stored" : "; hatched: exactly 0");
    }
    function weightText(v) {
      return v === 0 ? (sparse ? "0 (not stored)" : "0 (masked)") : v.toPrecision(4);
    }
    function cellAt(ev) {
      var rect = heat.getBoundingClientRect(), x = ev.clientX - rect.left - geo.ml, y = ev.clientY - rect.top - geo.mt;
      if (x < 0 || y < 0 || x >= geo.pw || y >= geo.ph) return null;
      return { i: S.r0 + Math.floor((y / geo.ph) * S.rspan), j: S.c0 + Math.floor((x / geo.pw) * S.cspan), x: x, y: y };
    }
    function clampView() {
      S.rspan = Math.max(Math.min(n, 4), Math.min(n, Math.round(S.rspan)));
      S.cspan = Math.max(Math.min(nk, 4), Math.min(nk, Math.round(S.cspan)));
      S.r0 = Math.max(0, Math.min(n - S.rspan, Math.round(S.r0)));
      S.c0 = Math.max(0, Math.min(nk - S.cspan, Math.round(S.c0)));
    }
    function unzoom() {
      S.rspan = n;
      S.cspan = nk;
      S.r0 = S.c0 = 0;
      redraw();
    }
    function zoom(factor, fy, fx, ai, aj) {
      var rspan = S.rspan, cspan = S.cspan;
      if (ai === undefined) {
        var q = query(), kq = keyOf();
        fy = fx = 0.5;
        ai = q !== null ? q : S.r0 + rspan / 2;
        aj = kq !== null ? kq : S.c0 + cspan / 2;
      }
      S.rspan = rspan * factor;
      S.cspan = cspan * factor;
      clampView();
      S.r0 = ai - fy * S.rspan;
      S.c0 = aj - fx * S.cspan;
      clampView();
      redraw();
    }

    // ------------------------------------------------------------------ the grid of heads
    var thumbs = {}, thumbEls = [], thumbPx = Math.max(28, Math.min(56, Math.floor(380 / Math.max(heads.length, 1))));
    function buildGrid() {
      var grid = $("grid");
      grid.style.gridTemplateColumns = "auto repeat(" + heads.length + ", " + (thumbPx + 4) + "px)";
      grid.appendChild(document.createElement("span"));
      heads.forEach(function (hd) {
        var lab = document.createElement("span");
        lab.className = "lab";
        lab.textContent = rollout ? "rollout" : "H" + hd;
        grid.appendChild(lab);
      });
      layers.forEach(function (l, li) {
        var lab = document.createElement("span");
        lab.className = "lab";
        lab.textContent = "L" + l;
        grid.appendChild(lab);
        thumbEls.push([]);
        heads.forEach(function (hd, hi) {
          var c = document.createElement("canvas");
          c.style.width = c.style.height = thumbPx + "px";
          c.title = "layer " + l + (rollout ? " · rollout" : " · head " + hd) +
            (D.layer_heads && hd >= D.layer_heads[li] ? " · no such head (layer " + l + " has " + D.layer_heads[li] + ")" : "");
          c.dataset.layer = l;
          c.dataset.head = hd;
          c.addEventListener("click", function () { choose(li, hi); });
          grid.appendChild(c);
          thumbEls[li].push(c);
        });
      });
    }
    var queue = [], pumping = false;
    function queueThumbs(all) {
      queue = [];
      layers.forEach(function (l, li) {
        heads.forEach(function (hd, hi) {
          if (all || !thumbs[li + "," + hi + "," + S.pool]) queue.push([li, hi]);
        });
      });
      queue.sort(function (a, b) {
        return (Math.abs(a[0] - S.li) + Math.abs(a[1] - S.hi)) - (Math.abs(b[0] - S.li) + Math.abs(b[1] - S.hi));
      });
      if (!pumping) {
        pumping = true;
        setTimeout(pump, 0);
      }
    }
    function pump() {
      var t0 = Date.now();
      while (queue.length && Date.now() - t0 < 30) {
        var next = queue.shift();
        drawThumb(next[0], next[1]);
      }
      if (queue.length) setTimeout(pump, 0);
      else pumping = false;
    }
    function drawThumb(li, hi) {
      var key = li + "," + hi + "," + S.pool, side = Math.round(thumbPx * geo.dpr);
      var gr = Math.min(n, side), gc = Math.min(nk, side);
      if (!thumbs[key]) thumbs[key] = pooled(getHead(li, hi), 0, 0, n, nk, gr, gc, S.pool);
      paint(thumbs[key], gr, gc, thumbEls[li][hi], getHead(li, hi));
    }
    function markGrid() {
      thumbEls.forEach(function (rowEls, li) {
        rowEls.forEach(function (c, hi) { c.classList.toggle("on", li === S.li && hi === S.hi); });
      });
    }

    // ------------------------------------------------------------------ state changes
    // One render per frame; a timer stands in where no frames come (a background tab, a
    // headless browser under load), so a change is never left undrawn.
    var frame = 0, timer = 0;
    function redraw() {
      if (frame) return;
      frame = requestAnimationFrame(flush);
      timer = setTimeout(flush, 100);
    }
    function flush() {
      if (!frame) return;
      cancelAnimationFrame(frame);
      clearTimeout(timer);
      frame = 0;
      render();
    }
    function render() {
      showSelection();
      drawHeat();
      markGrid();
      writeHash();
    }
    function choose(li, hi) {
      S.li = (li + layers.length) % layers.length;
      S.hi = (hi + heads.length) % heads.length;
      redraw();
    }
    function pin(i) {
      S.pinned = i;
      S.hover = null;
      if (i !== null && tokEls[i]) tokEls[i].scrollIntoView({ block: "nearest", inline: "nearest" });
      redraw();
    }
    function pinKey(j) {
      S.keyPinned = j;
      S.keyHover = null;
      if (j !== null && keyEls[j]) keyEls[j].scrollIntoView({ block: "nearest", inline: "nearest" });
      redraw();
    }
    function writeHash() {
      var p = "layer=" + layers[S.li] + (rollout ? "" : "&head=" + heads[S.hi]) +
        (S.pinned !== null ? "&token=" + S.pinned : "") + (keyed && S.keyPinned !== null ? "&key=" + S.keyPinned : "") +
        (S.dir === "col" ? "&dir=col" : "");
      if (location.hash.slice(1) === p) return;
      try {
        history.replaceState(null, "", "#" + p);
      } catch (e) {
        /* some browsers refuse it for file pages: the hash is a convenience only */
      }
    }
    function readHash() {
      var p = new URLSearchParams(location.hash.slice(1));
      var l = layers.indexOf(Number(p.get("layer"))), hd = heads.indexOf(Number(p.get("head")));
      if (p.has("layer") && l >= 0) S.li = l;
      if (p.has("head") && hd >= 0) S.hi = hd;
      if (p.has("token")) {
        var t = Number(p.get("token"));
        if (Number.isInteger(t) && t >= 0 && t < n) S.pinned = t;
      }
      if (keyed && p.has("key")) {
        var kt = Number(p.get("key"));
        if (Number.isInteger(kt) && kt >= 0 && kt < nk) S.keyPinned = kt;
      }
      if (p.get("dir") === "col" || p.get("dir") === "row") S.dir = p.get("dir");
    }

    // ------------------------------------------------------------------ events
    $("tokens").addEventListener("mouseover", function (e) {
      var t = e.target.closest ? e.target.closest(".tok") : null;
      if (t) { S.hover = Number(t.dataset.i); redraw(); }
    });
    $("tokens").addEventListener("mouseleave", function () { S.hover = null; redraw(); });
    $("tokens").addEventListener("click", function (e) {
      var t = e.target.closest ? e.target.closest(".tok") : null;
      if (t) pin(Number(t.dataset.i));
    });
    if (keyed) {  // the source row: hover or tap a source token to see which target tokens read it
      $("keys").addEventListener("mouseover", function (e) {
        var t = e.target.closest ? e.target.closest(".tok") : null;
        if (t) { S.keyHover = Number(t.dataset.i); redraw(); }
      });
      $("keys").addEventListener("mouseleave", function () { S.keyHover = null; redraw(); });
      $("keys").addEventListener("click", function (e) {
        var t = e.target.closest ? e.target.closest(".tok") : null;
        if (t) pinKey(Number(t.dataset.i));
      });
      $("dir-row").parentNode.style.display = "none";  // each row shows its own direction
    }
    ["top-keys", "top-queries"].forEach(function (id) {
      $(id).addEventListener("click", function (e) {
        var li = e.target.closest ? e.target.closest("li[data-key]") : null;
        if (li) (keyed && id === "top-keys" ? pinKey : pin)(Number(li.dataset.key));
      });
    });
    layerPick.addEventListener("change", function () { choose(Number(layerPick.value), S.hi); });
    headPick.addEventListener("change", function () { choose(S.li, Number(headPick.value)); });
    $("pool-picker").addEventListener("change", function (e) { S.pool = e.target.value; queueThumbs(false); redraw(); });
    $("scale-picker").addEventListener("change", function (e) { S.scale = e.target.value; queueThumbs(true); redraw(); });
    $("dir-row").addEventListener("click", function () { S.dir = "row"; redraw(); });
    $("dir-col").addEventListener("click", function () { S.dir = "col"; redraw(); });
    $("zoom-in").addEventListener("click", function () { zoom(0.5); });
    $("zoom-out").addEventListener("click", function () { zoom(2); });
    $("zoom-reset").addEventListener("click", unzoom);

    var drag = null;
    heat.addEventListener("pointerdown", function (e) {
      drag = { x: e.clientX, y: e.clientY, r0: S.r0, c0: S.c0, moved: false };
      heat.setPointerCapture(e.pointerId);
    });
    heat.addEventListener("pointermove", function (e) {
      if (drag && (drag.moved || Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) > 4)) {
        drag.moved = true;
        S.r0 = drag.r0 - ((e.clientY - drag.y) / geo.ph) * S.rspan;
        S.c0 = drag.c0 - ((e.clientX - drag.x) / geo.pw) * S.cspan;
        clampView();
        tip.hidden = true;
        redraw();
        return;
      }
      var at = cellAt(e);
      if (!at) { tip.hidden = true; return; }
      var h = getHead(S.li, S.hi), lines = (keyed ? "target " : "query ") + at.i + " " + clip(labels[at.i], 16) +
        (keyed ? "\nsource " : "\nkey   ") + at.j + " " + clip(keyLabels[at.j], 16) + "\nweight " + weightText(value(h, at.i, at.j));
      if (lastGrid && (S.rspan > lastGrid.gr || S.cspan > lastGrid.gc)) {
        var gy = Math.min(lastGrid.gr - 1, Math.floor((at.y / geo.ph) * lastGrid.gr));
        var gx = Math.min(lastGrid.gc - 1, Math.floor((at.x / geo.pw) * lastGrid.gc));
        lines += "\npixel  " + S.pool + " " + lastGrid.grid[gy * lastGrid.gc + gx].toPrecision(4);
      }
      tip.textContent = lines;
      tip.hidden = false;
      tip.style.left = Math.min(geo.w - 170, at.x + geo.ml + 14) + "px";
      tip.style.top = at.y + geo.mt + 14 + "px";
      if (S.hover !== at.i || (keyed && S.keyHover !== at.j)) {
        S.hover = at.i;
        if (keyed) S.keyHover = at.j;
        redraw();
      }
    });
    heat.addEventListener("pointerup", function (e) {
      var click = drag && !drag.moved;
      drag = null;
      if (click) {
        var at = cellAt(e);
        if (at && keyed) S.keyPinned = at.j;
        if (at) pin(at.i);
      }
    });
    heat.addEventListener("pointerleave", function () {
      tip.hidden = true;
      if (S.hover !== null || S.keyHover !== null) { S.hover = S.keyHover = null; redraw(); }
    });
    heat.addEventListener("dblclick", unzoom);
    heat.addEventListener("wheel", function (e) {
      e.preventDefault();
      var at = cellAt(e);
      if (!at) return;
      var factor = Math.pow(1.0015, e.deltaY * (e.deltaMode === 1 ? 30 : 1));
      zoom(factor, at.y / geo.ph, at.x / geo.pw, S.r0 + (at.y / geo.ph) * S.rspan, S.c0 + (at.x / geo.pw) * S.cspan);
    }, { passive: false });

    document.addEventListener("keydown", function (e) {
      var tag = e.target && e.target.tagName;
      if (e.ctrlKey || e.metaKey || e.altKey || tag === "SELECT" || tag === "INPUT" || tag === "TEXTAREA") return;
      var pan = Math.max(1, Math.round(Math.min(S.rspan, S.cspan) / 8)), q = query(), used = true;
      switch (e.key) {
        case "ArrowLeft": if (e.shiftKey) { S.c0 -= pan; clampView(); redraw(); } else choose(S.li, S.hi - 1); break;
        case "ArrowRight": if (e.shiftKey) { S.c0 += pan; clampView(); redraw(); } else choose(S.li, S.hi + 1); break;
        case "ArrowUp": if (e.shiftKey) { S.r0 -= pan; clampView(); redraw(); } else choose(S.li - 1, S.hi); break;
        case "ArrowDown": if (e.shiftKey) { S.r0 += pan; clampView(); redraw(); } else choose(S.li + 1, S.hi); break;
        case "[": pin(q === null ? n - 1 : (q - 1 + n) % n); break;
        case "]": pin(q === null ? 0 : (q + 1) % n); break;
        case "d": S.dir = S.dir === "row" ? "col" : "row"; redraw(); break;
        case "m": S.pool = S.pool === "max" ? "mean" : "max"; $("pool-picker").value = S.pool; queueThumbs(false); redraw(); break;
        case "s":
          S.scale = { linear: "sqrt", sqrt: "log", log: "linear" }[S.scale];
          $("scale-picker").value = S.scale; queueThumbs(true); redraw(); break;
        case "+": case "=": zoom(0.5); break;
        case "-": case "_": zoom(2); break;
        case "0": unzoom(); break;
        case "Escape": S.pinned = S.hover = S.keyPinned = S.keyHover = null; redraw(); break;
        default: used = false;
      }
      if (used) e.preventDefault();
    });
    window.addEventListener("hashchange", function () { readHash(); redraw(); });
    window.addEventListener("resize", function () { layout(); redraw(); });

    // ------------------------------------------------------------------ start
    readHash();
    buildGrid();
    layout();
    render();
    queueThumbs(true);
    $("attnscope-status").dataset.state = "ready";
    // Timings in ms: the page loaded (since navigation began), the data parsed, the first view drawn.
    $("attnscope-status").dataset.ms = [t0, tParsed - t0, performance.now() - tParsed].map(Math.round).join(" ");
  }
})();
