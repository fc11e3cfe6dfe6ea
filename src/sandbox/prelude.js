(function (host) {
  "use strict";
  const oids = new WeakMap();
  const encode = (v) => {
    const s = JSON.stringify(v, (k, x) =>
      (x !== null && typeof x === "object" && oids.has(x)) ? { "$ref": oids.get(x) } : x);
    return s === undefined ? "null" : s;
  };
  const revive = (k, x) =>
    (x !== null && typeof x === "object" && !Array.isArray(x) && typeof x.$ref === "string"
      && Object.keys(x).length === 1) ? ref(x.$ref) : x;
  // The reviver is slow; most values hold no reference.
  const decode = (s) => s.includes('"$ref"') ? JSON.parse(s, revive) : JSON.parse(s);
  const idOf = (t) => {
    if (typeof t === "string") return t;
    if (t !== null && typeof t === "object" && oids.has(t)) return oids.get(t);
    throw new TypeError("expected an object or an oid, got " + String(t));
  };
  // Values cross between methods as copies, the way JSON would carry them: primitives as
  // they are (non-finite numbers, undefined, functions and symbols as null), references as
  // the same proxy, anything else through JSON text.
  const copy = (v) => {
    switch (typeof v) {
      case "string": case "boolean": return v;
      case "number": return Number.isFinite(v) ? (v === 0 ? 0 : v) : null;
      case "object": return v === null ? null : (oids.has(v) ? v : decode(encode(v)));
      case "bigint": return decode(encode(v));
      default: return null;
    }
  };
  // A send to a method runs here, in JavaScript: the host looks the method up (compiled once
  // per script thread) and keeps the call stack, limits and error translation. Arguments are
  // copied as the caller, the result as the callee.
  const call = (oid, k, f, args, self) => {
    const a = args.length === 0 ? args : args.map(copy);
    const depth = host.enter(oid, k);
    let out;
    try {
      // Spreading the arguments costs an iterator per call: most sends have none or one.
      out = copy(a.length === 0 ? f(self) : a.length === 1 ? f(self, a[0]) : f(self, ...a));
    } catch (e) {
      host.fail(oid, k, e, depth);
      throw e;
    }
    host.leave(depth);
    return out;
  };
  // `self.k` for a method: `call` inlined, with the call stack entered through a call site the
  // host numbers once per operation (two strings less to carry across per send). A reference
  // kept past its operation finds its number stale and enters by name.
  const method = (oid, k, f, self) => {
    let site = -1;
    return (...args) => {
      const a = args.length === 0 ? args : args.map(copy);
      if (site === -1) site = host.site(oid, k);
      let depth = host.enterSite(site);
      if (depth < 0) depth = host.enter(oid, k);
      let out;
      try {
        out = a.length === 0 ? f(self) : a.length === 1 ? f(self, a[0]) : f(self, ...a);
        // copy(out), with finite numbers (most results) inline.
        out = typeof out === "number" ? (out - out === 0 ? out + 0 : null) : copy(out);
      } catch (e) {
        host.fail(oid, k, e, depth);
        throw e;
      }
      host.leave(depth);
      return out;
    };
  };
  // Within a message, what `self.k` found (a primitive, a method, or nothing) is kept per
  // proxy until anything is written: `gen` moves on at every write and every message.
  let gen = 0;
  const MISSING = Object.freeze(Object.create(null));
  // One proxy per object (a reference keeps its identity within a message); bounded.
  const proxies = new Map();
  function ref(oid) {
    let p = proxies.get(oid);
    if (p !== undefined) return p;
    if (proxies.size >= 1024) proxies.clear();
    // Keyed by the property's atom (a null-prototype object), not hashed as a Map's key.
    let found = Object.create(null);
    let at = -1;
    p = new Proxy(Object.create(null), harden({
      get(t, k) {
        if (typeof k !== "string") return undefined;
        if (at !== gen) { found = Object.create(null); at = gen; }
        let r = found[k];
        if (r !== undefined) return r === MISSING ? undefined : r;
        r = host.get(oid, k);
        if (typeof r === "function") {
          r = method(oid, k, r, p);
        } else if (r !== null && typeof r === "object") {
          return r; // a fresh copy at every read: the caller may change it
        }
        found[k] = r === undefined ? MISSING : r;
        return r;
      },
      set(t, k, v) {
        k = String(k);
        gen++;
        if ((typeof v === "object" && v !== null) || typeof v === "bigint") host.setText(oid, k, encode(v));
        else host.set(oid, k, copy(v));
        return true;
      },
      has(t, k) { return typeof k === "string" && host.has(oid, k); },
      deleteProperty(t, k) { throw new TypeError("slots are removed over the admin API, not with delete"); },
      defineProperty(t, k) { throw new TypeError("define slots by assignment: self." + String(k) + " = value"); },
      preventExtensions(t) { return false; },
      setPrototypeOf(t, p) { return false; },
    }));
    oids.set(p, oid);
    proxies.set(oid, p);
    return p;
  }
  globalThis.send = (target, selector, ...args) => {
    const oid = idOf(target), s = String(selector);
    const f = host.method(oid, s);
    if (typeof f === "function") return call(oid, s, f, args, ref(oid));
    gen++; // setters, clone and doesNotUnderstand_ may write
    return decode(host.send(oid, s, encode(args)));
  };
  globalThis.clone = (target, slots) => {
    const made = ref(host.clone(target === undefined ? host.current() : idOf(target), encode(slots === undefined ? {} : slots)));
    gen++;
    return made;
  };
  globalThis.log = (...parts) =>
    host.log(parts.map((p) => typeof p === "string" ? p : encode(p)).join(" "));
  // Lockdown: every built-in reachable from the global object (constructors, prototypes,
  // JSON, Math, Reflect, accessors included) is frozen, so no message can change what a later
  // message computes. Methods compiled later are frozen too (see harden below).
  const seen = new WeakSet();
  const harden = (root) => {
    const todo = [root];
    while (todo.length > 0) {
      const o = todo.pop();
      if ((typeof o !== "object" && typeof o !== "function") || o === null || seen.has(o)) continue;
      seen.add(o);
      Object.freeze(o);
      todo.push(Object.getPrototypeOf(o));
      for (const k of Reflect.ownKeys(o)) {
        const d = Reflect.getOwnPropertyDescriptor(o, k);
        if (d === undefined) continue;
        if ("value" in d) todo.push(d.value);
        if (d.get) todo.push(d.get);
        if (d.set) todo.push(d.set);
      }
    }
    return root;
  };
  // Freezing a prototype makes its data properties read-only for every object that inherits
  // them, so `err.message = m` or `obj.toString = f` would throw (the "override mistake").
  // These common ones become accessors whose setter gives the object an own property.
  const tame = (proto, key) => {
    const d = Reflect.getOwnPropertyDescriptor(proto, key);
    if (d === undefined || !("value" in d) || !d.configurable) return;
    const value = d.value;
    Object.defineProperty(proto, key, {
      get() { return value; },
      set(v) {
        if (this === proto) throw new TypeError("built-ins are frozen: " + String(key));
        Object.defineProperty(this, key, { value: v, writable: true, enumerable: true, configurable: true });
      },
      enumerable: d.enumerable,
      configurable: false,
    });
  };
  const errors = [Error, TypeError, RangeError, SyntaxError, ReferenceError, EvalError, URIError,
    typeof AggregateError === "function" ? AggregateError : Error];
  for (const E of errors) for (const k of ["message", "name", "constructor", "toString"]) tame(E.prototype, k);
  for (const P of [Object.prototype, Array.prototype, Function.prototype, Promise.prototype])
    for (const k of ["constructor", "toString", "valueOf", "toLocaleString", "name"]) tame(P, k);
  // Prototypes reached only through syntax, not through a global name.
  harden(Object.getPrototypeOf(function* () {}));
  harden(Object.getPrototypeOf(async function () {}));
  harden(Object.getPrototypeOf(async function* () {}));
  harden(Object.getPrototypeOf([][Symbol.iterator]()));
  harden(Object.getPrototypeOf(""[Symbol.iterator]()));
  harden(Object.getPrototypeOf(new Map()[Symbol.iterator]()));
  harden(Object.getPrototypeOf(new Set()[Symbol.iterator]()));
  harden(Object.getPrototypeOf(/x/[Symbol.matchAll]("")));
  // Finalizers and weak references would let code of one message run, or observe garbage
  // collection, during a later one: methods get neither.
  delete globalThis.FinalizationRegistry;
  delete globalThis.WeakRef;
  // V8-style stack hooks are context-wide setters that freezing does not disable: through
  // them a method could reach the prelude's functions or run its code in later messages.
  delete Error.prepareStackTrace;
  delete Error.stackTraceLimit;
  delete Error.captureStackTrace;
  harden(globalThis);
  const invoke = (f, oid, argsJson) => {
    gen++; // a new message, or a send the host ran (which may have written)
    return encode(f(ref(oid), ...decode(argsJson)));
  };
  for (const f of [encode, revive, decode, idOf, copy, call, method, ref, invoke, tame]) harden(f);
  return { invoke, harden, decode };
})
