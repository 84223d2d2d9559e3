// coxlmm sweep index: click a column header of the jobs table to sort by it (again: reverse).
(function () {
  "use strict";
  var table = document.getElementById("jobs-table");
  if (!table) return;
  var body = table.tBodies[0];
  var state = {col: -1, dir: 1};
  function key(row, col) {
    var text = row.cells[col].textContent.trim();
    var x = parseFloat(text);
    return isNaN(x) || !/^[-+.\d]/.test(text) ? {num: false, v: text.toLowerCase()} : {num: true, v: x};
  }
  Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, col) {
    th.addEventListener("click", function () {
      state.dir = state.col === col ? -state.dir : 1;
      state.col = col;
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var ka = key(a, col), kb = key(b, col);
        if (ka.num !== kb.num) return ka.num ? -1 : 1;  // numbers before dashes
        return (ka.v < kb.v ? -1 : ka.v > kb.v ? 1 : 0) * state.dir;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
})();
