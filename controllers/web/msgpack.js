// A small msgpack encoder/decoder: the subset protocol v1 uses (nil, bool, int, float, str, bin,
// array, map). No dependencies and no build step; see docs/protocol.md.
"use strict";

const MsgPack = (() => {
  const utf8enc = new TextEncoder();
  const utf8dec = new TextDecoder();

  function encode(value) {
    const out = [];
    const u8 = (b) => out.push(b & 0xff);
    const u16 = (v) => { u8(v >>> 8); u8(v); };
    const u32 = (v) => { u8(v >>> 24); u8(v >>> 16); u8(v >>> 8); u8(v); };
    const bytes = (arr) => { for (let i = 0; i < arr.length; i++) out.push(arr[i]); };

    function enc(v) {
      if (v === null || v === undefined) { u8(0xc0); return; }
      if (v === false) { u8(0xc2); return; }
      if (v === true) { u8(0xc3); return; }
      if (typeof v === "number") {
        if (Number.isInteger(v) && Math.abs(v) <= Number.MAX_SAFE_INTEGER) {
          if (v >= 0) {
            if (v < 0x80) u8(v);
            else if (v < 0x100) { u8(0xcc); u8(v); }
            else if (v < 0x10000) { u8(0xcd); u16(v); }
            else if (v < 0x100000000) { u8(0xce); u32(v); }
            else { u8(0xcf); u32(Math.floor(v / 0x100000000)); u32(v >>> 0); }
          } else {
            if (v >= -32) u8(v);
            else if (v >= -128) { u8(0xd0); u8(v); }
            else if (v >= -32768) { u8(0xd1); u16(v); }
            else if (v >= -2147483648) { u8(0xd2); u32(v); }
            else { u8(0xd3); const hi = Math.floor(v / 0x100000000); u32(hi); u32(v - hi * 0x100000000); }
          }
        } else {
          const b = new DataView(new ArrayBuffer(8));
          b.setFloat64(0, v);
          u8(0xcb); bytes(new Uint8Array(b.buffer));
        }
        return;
      }
      if (typeof v === "string") {
        const s = utf8enc.encode(v);
        if (s.length < 32) u8(0xa0 | s.length);
        else if (s.length < 0x100) { u8(0xd9); u8(s.length); }
        else if (s.length < 0x10000) { u8(0xda); u16(s.length); }
        else { u8(0xdb); u32(s.length); }
        bytes(s);
        return;
      }
      if (v instanceof Uint8Array || v instanceof ArrayBuffer) {
        const b = v instanceof ArrayBuffer ? new Uint8Array(v) : v;
        if (b.length < 0x100) { u8(0xc4); u8(b.length); }
        else if (b.length < 0x10000) { u8(0xc5); u16(b.length); }
        else { u8(0xc6); u32(b.length); }
        bytes(b);
        return;
      }
      if (Array.isArray(v)) {
        if (v.length < 16) u8(0x90 | v.length);
        else if (v.length < 0x10000) { u8(0xdc); u16(v.length); }
        else { u8(0xdd); u32(v.length); }
        v.forEach(enc);
        return;
      }
      if (typeof v === "object") {
        const keys = Object.keys(v).filter((k) => v[k] !== undefined);
        if (keys.length < 16) u8(0x80 | keys.length);
        else if (keys.length < 0x10000) { u8(0xde); u16(keys.length); }
        else { u8(0xdf); u32(keys.length); }
        for (const k of keys) { enc(k); enc(v[k]); }
        return;
      }
      throw new TypeError("msgpack: cannot encode " + typeof v);
    }
    enc(value);
    return new Uint8Array(out);
  }

  function decode(buffer) {
    const data = buffer instanceof Uint8Array ? buffer : new Uint8Array(buffer);
    const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
    let pos = 0;
    const need = (n) => { if (pos + n > data.length) throw new RangeError("msgpack: truncated message"); };
    const u8 = () => { need(1); return data[pos++]; };
    const rd = (n, f) => { need(n); const v = f(pos); pos += n; return v; };
    const str = (n) => { need(n); const s = utf8dec.decode(data.subarray(pos, pos + n)); pos += n; return s; };
    const bin = (n) => { need(n); const b = data.slice(pos, pos + n); pos += n; return b; };
    const arr = (n) => { const a = new Array(n); for (let i = 0; i < n; i++) a[i] = dec(); return a; };
    const map = (n) => { const m = {}; for (let i = 0; i < n; i++) { const k = dec(); m[k] = dec(); } return m; };

    function dec() {
      const t = u8();
      if (t < 0x80) return t;
      if (t < 0x90) return map(t & 0x0f);
      if (t < 0xa0) return arr(t & 0x0f);
      if (t < 0xc0) return str(t & 0x1f);
      if (t >= 0xe0) return t - 0x100;
      switch (t) {
        case 0xc0: return null;
        case 0xc2: return false;
        case 0xc3: return true;
        case 0xc4: return bin(u8());
        case 0xc5: return bin(rd(2, (p) => view.getUint16(p)));
        case 0xc6: return bin(rd(4, (p) => view.getUint32(p)));
        case 0xca: return rd(4, (p) => view.getFloat32(p));
        case 0xcb: return rd(8, (p) => view.getFloat64(p));
        case 0xcc: return u8();
        case 0xcd: return rd(2, (p) => view.getUint16(p));
        case 0xce: return rd(4, (p) => view.getUint32(p));
        case 0xcf: return rd(8, (p) => view.getUint32(p) * 0x100000000 + view.getUint32(p + 4));
        case 0xd0: return rd(1, (p) => view.getInt8(p));
        case 0xd1: return rd(2, (p) => view.getInt16(p));
        case 0xd2: return rd(4, (p) => view.getInt32(p));
        case 0xd3: return rd(8, (p) => view.getInt32(p) * 0x100000000 + view.getUint32(p + 4));
        case 0xd9: return str(u8());
        case 0xda: return str(rd(2, (p) => view.getUint16(p)));
        case 0xdb: return str(rd(4, (p) => view.getUint32(p)));
        case 0xdc: return arr(rd(2, (p) => view.getUint16(p)));
        case 0xdd: return arr(rd(4, (p) => view.getUint32(p)));
        case 0xde: return map(rd(2, (p) => view.getUint16(p)));
        case 0xdf: return map(rd(4, (p) => view.getUint32(p)));
        default: throw new TypeError("msgpack: unsupported type byte 0x" + t.toString(16));
      }
    }
    const value = dec();
    if (pos !== data.length) throw new RangeError("msgpack: trailing bytes after the message");
    return value;
  }

  return { encode, decode };
})();
