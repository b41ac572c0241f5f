/* gradscope interactive figures: hover values, drag to zoom, CSV/JSON downloads.
 * Each <div class="gs-chart"> holds its data as <script type="application/json"> (see
 * gradscope/reporting/chart.py for the format); this script draws it on a canvas at the
 * screen's pixel density. No network, no dependency. */
(function () {
  "use strict";
  var LN10 = Math.LN10, PAD = {l: 66, r: 14, t: 8, b: 40}, H = 330;
  var TIP_ALL = 4; /* up to this many curves the hover text lists them all; more: 3 nearest */
  var SUP = {"-": "\u207b", "0": "\u2070", "1": "\u00b9", "2": "\u00b2", "3": "\u00b3",
    "4": "\u2074", "5": "\u2075", "6": "\u2076", "7": "\u2077", "8": "\u2078", "9": "\u2079"};

  function fin(v) { return typeof v === "number" && isFinite(v); }
  function num(v) {
    if (!fin(v)) return "\u2013";
    var a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2).replace("e+", "e");
    return String(+v.toPrecision(4));
  }
  function pow10(l) { /* the quantity 10^l as text, also far outside the float range */
    if (l >= -3 && l < 5) return num(Math.pow(10, l));
    var e = Math.floor(l), m = Math.pow(10, l - e);
    if (m >= 9.995) { m /= 10; e += 1; }
    return m.toFixed(2) + "e" + e;
  }
  function sup(e) { return "10" + String(e).split("").map(function (c) { return SUP[c]; }).join(""); }
  function tr(v, scale) { /* data value -> axis coordinate (log10 units on log axes) */
    if (!fin(v)) return null;
    if (scale === "ln") return v / LN10;
    if (scale === "log") return v > 0 ? Math.log(v) / LN10 : null;
    return v;
  }
  function fmt(v, scale) {
    if (!fin(v)) return "no finite value";
    if (scale === "ln") return pow10(v / LN10) + " (ln " + num(v) + ")";
    return num(v);
  }
  function step(span, n) {
    var raw = span / n, e = Math.pow(10, Math.floor(Math.log(raw) / LN10)), f = raw / e;
    return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * e;
  }
  function ticks(lo, hi, n) { /* [[position, label]] on a linear axis */
    if (!fin(lo) || !fin(hi)) return [];
    if (!(hi > lo)) return [[lo, num(lo)]];
    var st = step(hi - lo, n), out = [];
    if (!(st > 0)) return [[lo, num(lo)]];
    for (var t = Math.ceil(lo / st - 1e-9) * st; t <= hi + st * 1e-9 && out.length < 40; t += st) {
      out.push([t, num(Math.abs(t) < st * 1e-9 ? 0 : t)]);
    }
    return out;
  }
  function logTicks(lo, hi, n) { /* positions in log10 units, labelled with the values */
    var span = hi - lo, out = [], t, k;
    if (!fin(lo) || !fin(hi)) return [];
    if (span >= 2) {
      var st = Math.max(1, Math.round(step(span, n)));
      for (t = Math.ceil(lo / st) * st; t <= hi && out.length < 40; t += st) {
        out.push([t, t >= -3 && t < 5 ? num(Math.pow(10, t)) : sup(t)]);
      }
      return out;
    }
    for (k = Math.floor(lo) - 1; k <= Math.ceil(hi); k++) {
      [1, 2, 5].forEach(function (m) {
        var p = k + Math.log(m) / LN10;
        if (p >= lo && p <= hi) out.push([p, pow10(p)]);
      });
    }
    if (out.length >= 2) return out;
    return ticks(Math.pow(10, lo), Math.pow(10, hi), n).filter(function (p) { return p[0] > 0; })
      .map(function (p) { return [Math.log(p[0]) / LN10, p[1]]; });
  }
  function column(d, name) {
    for (var i = 0; i < d.columns.length; i++) if (d.columns[i].name === name) return d.columns[i];
    return null;
  }

  /* ---- the table a download carries: the figure's columns, long format ---- */
  function table(d) {
    if (!d.grid) return d.columns;
    var xs = [], ys = [], zs = [];
    d.y.values.forEach(function (y, i) {
      d.x.values.forEach(function (x, j) { ys.push(y); xs.push(x); zs.push(d.z.values[i][j]); });
    });
    return [{name: d.y.name, unit: d.y.unit, values: ys}, {name: d.x.name, unit: d.x.unit, values: xs},
      {name: d.z.name, unit: d.z.unit, values: zs}];
  }
  function csvCell(v) {
    if (v === null || v === undefined) return "";
    var s = String(v);
    /* a text starting with = + - @ tab or CR is a formula to a spreadsheet (CSV injection):
       a leading ' keeps it text; numbers stay numbers */
    if (typeof v === "string" && /^[=+\-@\t\r]/.test(s)) s = "'" + s;
    return /[",\r\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
  }
  function toCSV(d) {
    var cols = table(d), rows = [cols.map(function (c) { return csvCell(c.name + " (" + c.unit + ")"); }).join(",")];
    for (var i = 0; i < cols[0].values.length; i++) {
      rows.push(cols.map(function (c) { return csvCell(c.values[i]); }).join(","));
    }
    return rows.join("\n") + "\n";
  }
  function toJSON(d) { return JSON.stringify({title: d.title, columns: table(d)}); }
  function save(name, text, type) {
    var a = document.createElement("a");
    a.href = URL.createObjectURL(new Blob([text], {type: type}));
    a.download = name;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(function () { URL.revokeObjectURL(a.href); }, 4000);
  }

  /* ---- one figure ---- */
  function Fig(box) {
    var d = this.d = JSON.parse(box.querySelector("script.gs-data").textContent), self = this;
    if (d.grid) { d.x = d.grid.x; d.y = d.grid.y; d.z = d.grid.z; }
    this.box = box;
    this.file = box.getAttribute("data-file") || "figure";
    box.insertAdjacentHTML("beforeend",
      '<div class="gs-bar"><span class="gs-title"></span><span class="gs-tools">' +
      '<button type="button" data-act="reset" title="Back to the first view (or double-click the plot)">Reset zoom</button>' +
      '<button type="button" data-act="csv" title="The plotted numbers as CSV">CSV</button>' +
      '<button type="button" data-act="json" title="The plotted numbers as JSON">JSON</button>' +
      '</span></div><div class="gs-plot"><canvas role="img"></canvas><div class="gs-tip" hidden></div>' +
      '</div><div class="gs-legend"></div>');
    box.querySelector(".gs-title").textContent = d.title;
    if (d.accent) box.querySelector(".gs-title").style.color = d.accent;
    this.cv = box.querySelector("canvas");
    this.cv.setAttribute("aria-label", d.title);
    this.tip = box.querySelector(".gs-tip");
    this.pad = {l: PAD.l, r: d.grid ? 86 : PAD.r, t: PAD.t, b: PAD.b};
    if (d.grid) this.initGrid(); else this.initXY();
    this.reset();
    box.querySelector(".gs-tools").addEventListener("click", function (ev) {
      var act = ev.target.getAttribute && ev.target.getAttribute("data-act");
      if (act === "reset") self.reset();
      if (act === "csv") save(self.file + ".csv", toCSV(d), "text/csv");
      if (act === "json") save(self.file + ".json", toJSON(d), "application/json");
    });
    this.cv.addEventListener("mousemove", function (ev) { self.move(ev); });
    this.cv.addEventListener("mouseleave", function () { self.hover = null; self.tip.hidden = true; self.draw(); });
    this.cv.addEventListener("mousedown", function (ev) { self.drag = [self.pos(ev), null]; ev.preventDefault(); });
    window.addEventListener("mouseup", function (ev) { if (self.drag) self.zoom(self.pos(ev)); });
    this.cv.addEventListener("dblclick", function () { self.reset(); });
  }
  Fig.prototype.pos = function (ev) {
    var r = this.cv.getBoundingClientRect();
    return [ev.clientX - r.left, ev.clientY - r.top];
  };
  Fig.prototype.initXY = function () {
    var d = this.d, sc = d.yscale, xs = [], ylo = Infinity, yhi = -Infinity, legend = [];
    this.series = d.series.map(function (s) {
      var x = column(d, s.x).values, ys = (typeof s.y === "string" ? [s.y] : s.y).map(function (n) {
        return column(d, n).values;
      });
      var rows = [], w = s.where ? column(d, s.where[0]).values : null;
      var by = s.by ? column(d, s.by).values : null;
      for (var i = 0; i < x.length; i++) {
        if (w && w[i] !== s.where[1]) continue;
        rows.push(i);
        ys.forEach(function (y) {
          var v = tr(y[i], sc);
          if (v !== null && fin(x[i])) { ylo = Math.min(ylo, v); yhi = Math.max(yhi, v); xs.push(x[i]); }
        });
      }
      var shown = rows.filter(function (i) { return ys.every(function (y) { return fin(y[i]); }); });
      function key(colour, label, faint, dash) {
        var look = dash ? "height:0;border-top:3px dashed " + colour : "background:" + colour + (faint ? ";opacity:.35" : "");
        legend.push('<span><i style="' + look + '"></i>' +
          label.replace(/&/g, "&amp;").replace(/</g, "&lt;") + "</span>");
      }
      if (s.legend !== false && shown.length) {
        key(s.color, s.label, s.kind === "band", s.dash && s.dash.length);
        /* points coloured by a category: one entry per category shown */
        if (by) {
          shown.map(function (i) { return by[i]; }).filter(function (c, j, a) { return c && s.styles[c] && a.indexOf(c) === j; })
            .forEach(function (c) { key(s.styles[c][0], s.styles[c][2] || s.label + ": " + c); });
        }
      }
      return {s: s, x: x, ys: ys, rows: rows, by: by};
    });
    (d.hlines || []).forEach(function (h) { var v = tr(h, sc); if (v !== null) { ylo = Math.min(ylo, v); yhi = Math.max(yhi, v); } });
    xs.sort(function (a, b) { return a - b; });
    this.xs = xs.filter(function (v, i) { return i === 0 || v !== xs[i - 1]; });
    if (!this.xs.length) { this.xs = [0]; ylo = 0; yhi = 1; }
    this.full = [this.xs[0], this.xs[this.xs.length - 1], ylo, yhi];
    this.marks = d.series.some(function (s) { return s.marker || s.kind === "points"; });
    this.box.querySelector(".gs-legend").innerHTML = legend.join("");
  };
  Fig.prototype.initGrid = function () {
    var g = this.d, z = g.z.values, lo = Infinity, hi = -Infinity, self = this;
    this.zt = z.map(function (row) {
      return row.map(function (v) { var t = tr(v, g.grid.scale); if (t !== null) { lo = Math.min(lo, t); hi = Math.max(hi, t); } return t; });
    });
    if (!fin(lo)) { lo = 0; hi = 1; }
    this.zr = [lo, hi > lo ? hi : lo + 1];
    var nx = g.x.values.length, ny = g.y.values.length, off = document.createElement("canvas");
    off.width = nx; off.height = ny;
    var ctx = off.getContext("2d"), img = ctx.createImageData(nx, ny), cols = g.grid.colors.map(rgb);
    var miss = rgb(g.grid.missing);
    for (var i = 0; i < ny; i++) {
      var row = g.grid.y_up ? ny - 1 - i : i;
      for (var j = 0; j < nx; j++) {
        var t = self.zt[row][j], c = t === null ? miss :
          cols[Math.min(cols.length - 1, Math.floor((t - lo) / (self.zr[1] - lo) * cols.length))];
        img.data.set([c[0], c[1], c[2], 255], 4 * (i * nx + j));
      }
    }
    ctx.putImageData(img, 0, 0);
    this.off = off;
    this.full = [-0.5, nx - 0.5, -0.5, ny - 0.5];
    this.box.querySelector(".gs-legend").textContent = "Colour: " + g.ylabel + " (log scale)" +
      (this.zt.some(function (r) { return r.indexOf(null) >= 0; }) ? "; grey: no finite value" : "");
  };
  function rgb(hex) { return [1, 3, 5].map(function (i) { return parseInt(hex.substr(i, 2), 16); }); }

  Fig.prototype.reset = function () {
    var f = this.full, ypad = Math.max(f[3] - f[2], 0.2) * 0.05;
    var x1 = f[1] > f[0] ? f[1] : f[0] + 1, xpad = this.marks ? (x1 - f[0]) * 0.02 : 0;
    this.view = this.d.grid ? f.slice() : [f[0] - xpad, x1 + xpad, f[2] - ypad, f[3] + ypad];
    if (this.d.yview && !this.d.grid) {
      this.view[2] = tr(this.d.yview[0], this.d.yscale); this.view[3] = tr(this.d.yview[1], this.d.yscale);
    }
    this.hover = null;
    this.draw();
  };
  Fig.prototype.zoom = function (end) {
    var start = this.drag[0], v = this.view;
    this.drag = null;
    if (Math.abs(end[0] - start[0]) < 5) { this.draw(); return; }
    var x0 = this.ix(Math.min(start[0], end[0])), x1 = this.ix(Math.max(start[0], end[0]));
    if (this.d.grid) {
      var y0 = v[2], y1 = v[3];
      if (Math.abs(end[1] - start[1]) >= 5) {
        y0 = this.iy(Math.max(start[1], end[1])); y1 = this.iy(Math.min(start[1], end[1]));
      }
      this.view = [Math.floor(x0 + 0.5) - 0.5, Math.ceil(x1 - 0.5) + 0.5, Math.floor(y0 + 0.5) - 0.5, Math.ceil(y1 - 0.5) + 0.5];
    } else { /* y follows the data in the chosen x range */
      var lo = Infinity, hi = -Infinity, sc = this.d.yscale;
      this.series.forEach(function (q) {
        q.rows.forEach(function (i) {
          if (q.x[i] < x0 || q.x[i] > x1) return;
          q.ys.forEach(function (y) { var t = tr(y[i], sc); if (t !== null) { lo = Math.min(lo, t); hi = Math.max(hi, t); } });
        });
      });
      if (!(hi >= lo)) { lo = v[2]; hi = v[3]; }
      var pad = Math.max(hi - lo, 0.05) * 0.06;
      this.view = [x0, x1, lo - pad, hi + pad];
    }
    this.draw();
  };
  /* pixel <-> axis coordinates (for a grid: column and row index, row 0 at the top unless y_up) */
  Fig.prototype.px = function (x) { var v = this.view; return this.pad.l + (x - v[0]) / (v[1] - v[0]) * this.w; };
  Fig.prototype.py = function (y) { var v = this.view; return this.pad.t + (1 - (y - v[2]) / (v[3] - v[2])) * this.h; };
  Fig.prototype.ix = function (px) { var v = this.view; return v[0] + (px - this.pad.l) / this.w * (v[1] - v[0]); };
  Fig.prototype.iy = function (py) { var v = this.view; return v[2] + (1 - (py - this.pad.t) / this.h) * (v[3] - v[2]); };

  Fig.prototype.draw = function () {
    var cv = this.cv, dpr = window.devicePixelRatio || 1, W = cv.clientWidth || 520;
    cv.style.height = H + "px";
    if (cv.width !== Math.round(W * dpr)) cv.width = Math.round(W * dpr);
    if (cv.height !== Math.round(H * dpr)) cv.height = Math.round(H * dpr);
    var c = this.c = cv.getContext("2d"), p = this.pad, d = this.d, self = this;
    c.setTransform(dpr, 0, 0, dpr, 0, 0);
    c.clearRect(0, 0, W, H);
    this.w = W - p.l - p.r; this.h = H - p.t - p.b;
    c.font = "12px system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', Arial, sans-serif";
    var v = this.view, xt, yt;
    if (d.grid) {
      var ix = function (lo, hi, vals) { /* ticks at whole indices, labelled with the coordinate */
        return ticks(Math.ceil(lo), Math.floor(hi), 6).filter(function (t) { return t[0] % 1 === 0; })
          .map(function (t) { return [t[0], num(vals[t[0]])]; });
      };
      xt = ix(v[0], v[1], d.x.values);
      var yv = d.grid.y_up ? d.y.values : d.y.values.slice().reverse();
      yt = ix(v[2], v[3], yv);
    } else {
      xt = ticks(v[0], v[1], 7);
      yt = d.yscale === "linear" ? ticks(v[2], v[3], 6) : logTicks(v[2], v[3], 6);
    }
    c.strokeStyle = "#e3e3e3"; c.lineWidth = 1; c.fillStyle = "#333"; c.textAlign = "center";
    xt.forEach(function (t) {
      var x = self.px(t[0]); if (x < p.l - 0.5 || x > p.l + self.w + 0.5) return;
      if (!d.grid) { c.beginPath(); c.moveTo(x, p.t); c.lineTo(x, p.t + self.h); c.stroke(); }
      c.fillText(t[1], x, p.t + self.h + 15);
    });
    c.textAlign = "right"; c.textBaseline = "middle";
    yt.forEach(function (t) {
      var y = self.py(t[0]); if (y < p.t - 0.5 || y > p.t + self.h + 0.5) return;
      if (!d.grid) { c.beginPath(); c.moveTo(p.l, y); c.lineTo(p.l + self.w, y); c.stroke(); }
      c.fillText(t[1], p.l - 6, y);
    });
    c.textAlign = "center"; c.textBaseline = "alphabetic"; c.fillStyle = "#444";
    c.fillText(d.xlabel, p.l + this.w / 2, H - 6);
    c.save(); c.translate(13, p.t + this.h / 2); c.rotate(-Math.PI / 2);
    c.fillText(d.grid ? d.y.name.replace(/_/g, " ") : d.ylabel, 0, 0); c.restore();
    c.save(); c.beginPath(); c.rect(p.l, p.t, this.w, this.h); c.clip();
    if (d.grid) this.drawGrid(); else this.drawXY();
    c.restore();
    c.strokeStyle = "#888"; c.strokeRect(p.l + 0.5, p.t + 0.5, this.w - 1, this.h - 1);
  };
  Fig.prototype.drawGrid = function () {
    var c = this.c, v = this.view, ny = this.d.y.values.length, p = this.pad;
    c.imageSmoothingEnabled = false;
    /* index space: column j spans [j-0.5, j+0.5]; image row r (top) is view row ny-1-r */
    c.drawImage(this.off, v[0] + 0.5, ny - 1 - v[3] + 0.5, v[1] - v[0], v[3] - v[2], p.l, p.t, this.w, this.h);
    if (this.hover) {
      c.strokeStyle = "#000"; c.lineWidth = 1.5;
      var h = this.hover, x = this.px(h[0] - 0.5), y = this.py(h[1] + 0.5);
      c.strokeRect(x, y, this.px(h[0] + 0.5) - x, this.py(h[1] - 0.5) - y);
    }
    c.restore(); c.save();
    var x0 = p.l + this.w + 14, cols = this.d.grid.colors, n = cols.length, zr = this.zr;
    for (var i = 0; i < n; i++) {
      c.fillStyle = cols[i];
      c.fillRect(x0, p.t + this.h * (1 - (i + 1) / n), 14, this.h / n + 0.6);
    }
    c.fillStyle = "#333"; c.textAlign = "left"; c.textBaseline = "middle";
    logTicks(zr[0], zr[1], 6).forEach(function (t) {
      c.fillText(t[1], x0 + 18, p.t + (1 - (t[0] - zr[0]) / (zr[1] - zr[0])) * (H - p.t - p.b));
    });
  };
  Fig.prototype.drawXY = function () {
    var c = this.c, self = this, sc = this.d.yscale;
    this.series.forEach(function (q) {
      var s = q.s, col = s.color;
      c.setLineDash(s.dash || []); c.lineWidth = s.kind === "line" ? (s.width || 2) : 1.2;
      if (s.kind === "band") {
        var runs = [[]];
        q.rows.forEach(function (i) {
          var a = tr(q.ys[0][i], sc), b = tr(q.ys[1][i], sc);
          if (a === null || b === null) { runs.push([]); return; }
          runs[runs.length - 1].push([self.px(q.x[i]), self.py(a), self.py(b)]);
        });
        c.fillStyle = col; c.globalAlpha = s.opacity || 0.22;
        runs.forEach(function (r) {
          if (r.length < 2) return;
          c.beginPath(); c.moveTo(r[0][0], r[0][1]);
          r.forEach(function (pt) { c.lineTo(pt[0], pt[1]); });
          for (var k = r.length - 1; k >= 0; k--) c.lineTo(r[k][0], r[k][2]);
          c.closePath(); c.fill();
        });
        c.globalAlpha = 1;
        return;
      }
      if (s.kind === "line") {
        c.strokeStyle = col; c.beginPath();
        var on = false;
        q.rows.forEach(function (i) {
          var y = tr(q.ys[0][i], sc);
          if (y === null || !fin(q.x[i])) { if (!s.join) on = false; return; }
          if (on) c.lineTo(self.px(q.x[i]), self.py(y)); else c.moveTo(self.px(q.x[i]), self.py(y));
          on = true;
        });
        c.stroke();
      }
      c.setLineDash([]);
      if (s.marker || s.kind === "points") {
        q.rows.forEach(function (i) {
          var y = tr(q.ys[0][i], sc), st = q.by && s.styles[q.by[i]];
          if (y !== null) mark(c, st ? st[1] : s.marker || "o", self.px(q.x[i]), self.py(y), st ? st[0] : col, 4);
        });
      }
    });
    c.setLineDash([2, 3]); c.strokeStyle = "#000"; c.lineWidth = 0.8;
    (this.d.hlines || []).forEach(function (h) {
      var y = self.py(tr(h, sc)); c.beginPath(); c.moveTo(self.pad.l, y); c.lineTo(self.pad.l + self.w, y); c.stroke();
    });
    c.setLineDash([]);
    if (this.hover !== null && this.hover !== undefined) {
      var x = this.px(this.hover);
      c.strokeStyle = "rgba(0,0,0,.45)"; c.lineWidth = 1;
      c.beginPath(); c.moveTo(x, this.pad.t); c.lineTo(x, this.pad.t + this.h); c.stroke();
      this.series.forEach(function (q, n) {
        if (q.s.kind === "band" || (self.ringed && !self.ringed[n])) return;
        q.rows.forEach(function (i) {
          var y = tr(q.ys[0][i], sc);
          if (q.x[i] === self.hover && y !== null) mark(c, "o", x, self.py(y), q.s.color, 4.5, true);
        });
      });
    }
    if (this.drag && this.drag[1]) {
      var a = this.drag[0][0], b = this.drag[1][0];
      c.fillStyle = "rgba(0,114,178,.12)"; c.fillRect(Math.min(a, b), this.pad.t, Math.abs(b - a), this.h);
    }
  };
  function mark(c, m, x, y, col, r, ring) {
    c.beginPath();
    if (m === "v" || m === "^") {
      var s = m === "v" ? 1 : -1;
      c.moveTo(x - r, y - s * r * 0.8); c.lineTo(x + r, y - s * r * 0.8); c.lineTo(x, y + s * r); c.closePath();
    } else if (m === "s") { c.rect(x - r * 0.8, y - r * 0.8, r * 1.6, r * 1.6); } else { c.arc(x, y, r, 0, 2 * Math.PI); }
    if (ring) { c.strokeStyle = col; c.fillStyle = "#fff"; c.lineWidth = 2; c.fill(); c.stroke(); } else { c.fillStyle = col; c.fill(); }
  }

  Fig.prototype.move = function (ev) {
    var q = this.pos(ev), d = this.d, lines = [], sc = d.yscale, p = this.pad;
    if (this.drag) { this.drag[1] = q; this.draw(); if (d.grid) this.band(this.drag[0], q); return; }
    if (q[0] < p.l || q[0] > p.l + this.w || q[1] < p.t || q[1] > p.t + this.h) {
      this.hover = null; this.tip.hidden = true; this.draw(); return;
    }
    if (d.grid) {
      var j = Math.round(this.ix(q[0])), r = Math.round(this.iy(q[1])), ny = d.y.values.length;
      var i = d.grid.y_up ? r : ny - 1 - r;
      if (j < 0 || j >= d.x.values.length || i < 0 || i >= ny) return;
      this.hover = [j, r];
      lines.push(d.y.name.replace(/_/g, " ") + " " + num(d.y.values[i]) + ", " + d.x.name + " " + num(d.x.values[j]));
      var z = d.z.values[i][j];
      lines.push(d.ylabel + ": " + (d.grid.scale === "ln" ? fmt(z, "ln") : (z > 0 ? num(z) : "no finite value")));
    } else {
      var x = this.ix(q[0]), best = null;
      this.xs.forEach(function (v) { if (v >= this.view[0] && v <= this.view[1] && (best === null || Math.abs(v - x) < Math.abs(best - x))) best = v; }, this);
      if (best === null) return;
      this.hover = best;
      lines.push(column(d, this.series[0].s.x).name.replace(/_/g, " ") + " = " + num(best));
      var near = this.nearest(best, q[1]);
      this.ringed = near.ringed;
      near.rows.forEach(function (r) { lines.push(r); });
    }
    this.tip.textContent = "";
    lines.forEach(function (t, k) {
      var e = document.createElement(k ? "div" : "b");
      if (t && t.near) e.className = "gs-near";
      if (t && t.more) e.className = "gs-more";
      e.textContent = t.text || t; this.tip.appendChild(e);
    }, this);
    this.tip.hidden = false;
    /* beside the pointer, never over the point it describes: right of it if there is room,
       else left; below it in the upper half of the plot, above it in the lower half */
    var tw = this.tip.offsetWidth, th = this.tip.offsetHeight;
    var left = q[0] + 14 + tw > this.cv.clientWidth ? q[0] - 14 - tw : q[0] + 14;
    var top = q[1] < p.t + this.h / 2 ? q[1] + 14 : q[1] - 14 - th;
    this.tip.style.left = Math.max(0, left) + "px";
    this.tip.style.top = Math.max(0, top) + "px";
    this.draw();
  };
  /* The hover text at x = best: the series nearest the pointer (bold) and its neighbours
     above and below, not all of them. A band is read with the line of the same curve (the
     same "where"); the text names how many curves are left out. */
  Fig.prototype.nearest = function (best, cy) {
    var self = this, sc = this.d.yscale, groups = [], byKey = {};
    this.series.forEach(function (s, n) {
      s.rows.forEach(function (i) {
        if (s.x[i] !== best) return;
        var band = s.ys.length === 2, a = tr(s.ys[0][i], sc), b = band ? tr(s.ys[1][i], sc) : a;
        if (a === null || b === null) return;
        var txt = band ? fmt(s.ys[0][i], sc) + " \u2013 " + fmt(s.ys[1][i], sc) : fmt(s.ys[0][i], sc);
        if (s.by && s.by[i]) txt += " (" + s.by[i] + ")";
        var key = s.s.where ? "w" + JSON.stringify(s.s.where) : "s" + n, g = byKey[key];
        if (!g) { g = byKey[key] = {rows: [], py: null, series: []}; groups.push(g); }
        g.rows.push((s.s.tip || s.s.label) + ": " + txt);
        g.series.push(n);
        if (!band || g.py === null) g.py = self.py(band ? (a + b) / 2 : a);
      });
    });
    groups.sort(function (g, h) { return g.py - h.py; });
    var j = 0;
    groups.forEach(function (g, k) { if (Math.abs(g.py - cy) < Math.abs(groups[j].py - cy)) j = k; });
    var lo = 0, hi = groups.length;
    if (groups.length > TIP_ALL) { lo = Math.max(0, Math.min(j - 1, groups.length - 3)); hi = lo + 3; }
    var rows = [], ringed = {};
    groups.slice(lo, hi).forEach(function (g, k) {
      g.series.forEach(function (n) { ringed[n] = true; });
      g.rows.forEach(function (r) { rows.push(lo + k === j && groups.length > 1 ? {text: r, near: true} : r); });
    });
    var left = groups.length - (hi - lo);
    if (left > 0) rows.push({text: "+ " + left + " more curve" + (left > 1 ? "s" : "") + ": move up or down", more: true});
    return {rows: rows, ringed: ringed};
  };
  Fig.prototype.band = function (a, b) {
    var c = this.c; c.strokeStyle = "#fff"; c.setLineDash([4, 3]); c.lineWidth = 1.5;
    c.strokeRect(Math.min(a[0], b[0]), Math.min(a[1], b[1]), Math.abs(b[0] - a[0]), Math.abs(b[1] - a[1]));
    c.setLineDash([]);
  };

  function init() {
    var figs = [];
    Array.prototype.forEach.call(document.querySelectorAll(".gs-chart"), function (box) {
      try { box.gsFigure = new Fig(box); figs.push(box.gsFigure); } catch (e) {
        box.textContent = "This figure could not be drawn: " + e.message;
        throw e;
      }
    });
    var timer = null;
    window.addEventListener("resize", function () {
      clearTimeout(timer);
      timer = setTimeout(function () { figs.forEach(function (f) { f.draw(); }); }, 120);
    });
    /* a figure inside a closed <details> has no width until it is opened */
    document.addEventListener("toggle", function (ev) {
      if (ev.target.open) figs.forEach(function (f) { if (ev.target.contains(f.box)) f.draw(); });
    }, true);
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", init); else init();
})();
