/* fgnb: the ipywidgets 8 HTML manager (embed-amd.js) typesets widget labels with the
 * MathJax 2 API, MathJax.Hub.Queue(["Typeset", MathJax.Hub, el]); the book loads
 * MathJax 3, which has no Hub, so every widget with a description threw a TypeError.
 * This maps Hub.Queue to MathJax 3's typesetPromise. Loaded before embed-amd.js
 * (see nb_ipywidgets_js in _config.yml); only pages with widgets load it. */
(function () {
  "use strict";
  function typeset(el) {
    var mj = window.MathJax;
    if (!mj || !mj.startup || !mj.startup.promise || !mj.typesetPromise) return;
    mj.startup.promise
      .then(function () { return mj.typesetPromise(el ? [el] : undefined); })
      .catch(function (err) { console.warn("MathJax typeset of a widget failed:", err); });
  }
  var hub = { Queue: function (cmd) { typeset(Array.isArray(cmd) ? cmd[2] : undefined); } };
  function addHub(obj) {
    if (obj && typeof obj === "object" && !obj.Hub) {
      try { obj.Hub = hub; } catch (e) { /* frozen object: leave it */ }
    }
  }
  // MathJax 3 replaces window.MathJax (the config object) with itself when it starts.
  var current = window.MathJax;
  addHub(current);
  try {
    Object.defineProperty(window, "MathJax", {
      configurable: true,
      enumerable: true,
      get: function () { return current; },
      set: function (value) { current = value; addHub(value); }
    });
  } catch (e) { /* non-configurable: fall back to patching at load time */ }
  document.addEventListener("DOMContentLoaded", function () { addHub(window.MathJax); });
})();
