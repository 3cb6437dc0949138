#include "facelab/onnx_weights.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <memory>
#include <stdexcept>
#include <vector>

#include <openssl/evp.h>

namespace facelab {
namespace {

struct Bytes {
  const uint8_t* p = nullptr;
  size_t n = 0;
};

// Protocol-buffer wire format: a message is a sequence of (tag varint, value); tag = field << 3 | wire type.
class Reader {
 public:
  Reader(Bytes b, const std::string& where) : p_(b.p), end_(b.p + b.n), where_(where) {}
  bool done() const { return p_ >= end_; }
  uint64_t varint() {
    uint64_t v = 0;
    for (int s = 0; s < 64; s += 7) {
      if (p_ >= end_) fail("truncated varint");
      uint8_t c = *p_++;
      v |= static_cast<uint64_t>(c & 0x7f) << s;
      if (!(c & 0x80)) return v;
    }
    fail("varint too long");
    return 0;
  }
  // next field: returns false at the end
  bool next(uint32_t& field, uint32_t& wire) {
    if (done()) return false;
    uint64_t tag = varint();
    field = static_cast<uint32_t>(tag >> 3);
    wire = static_cast<uint32_t>(tag & 7);
    return true;
  }
  Bytes bytes() {
    uint64_t n = varint();
    if (n > static_cast<uint64_t>(end_ - p_)) fail("length past the end");
    Bytes b{p_, static_cast<size_t>(n)};
    p_ += n;
    return b;
  }
  uint64_t fixed(int n) {
    if (end_ - p_ < n) fail("truncated fixed field");
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(p_[i]) << (8 * i);
    p_ += n;
    return v;
  }
  void skip(uint32_t wire) {
    switch (wire) {
      case 0: varint(); break;
      case 1: fixed(8); break;
      case 2: bytes(); break;
      case 5: fixed(4); break;
      default: fail("unsupported wire type " + std::to_string(wire));
    }
  }
  [[noreturn]] void fail(const std::string& m) const { throw std::runtime_error(where_ + ": not a readable ONNX file (" + m + ")"); }

 private:
  const uint8_t* p_;
  const uint8_t* end_;
  std::string where_;
};

// repeated scalar field, packed (wire 2) or not
template <class F>
void repeated(Reader& r, uint32_t wire, const std::string& where, F&& one) {
  if (wire == 2) {
    Reader sub(r.bytes(), where);
    while (!sub.done()) one(sub);
  } else {
    one(r);
  }
}

struct TensorRec {
  std::string name;
  int32_t data_type = 0;
  std::vector<int64_t> dims;
  std::vector<uint8_t> raw;      // raw_data
  bool has_raw = false, external = false;
  std::vector<float> f32;
  std::vector<int64_t> i32, i64;  // int32_data as values (sign-extended), int64_data
  std::vector<double> f64;
  std::vector<uint64_t> u64;
  std::vector<std::string> strs;
};

TensorRec parseTensor(Bytes b, const std::string& where) {
  TensorRec t;
  Reader r(b, where);
  uint32_t f, w;
  while (r.next(f, w)) {
    switch (f) {
      case 1: repeated(r, w, where, [&](Reader& x) { t.dims.push_back(static_cast<int64_t>(x.varint())); }); break;
      case 2: t.data_type = static_cast<int32_t>(r.varint()); break;
      case 4: repeated(r, w, where, [&](Reader& x) { uint32_t u = static_cast<uint32_t>(x.fixed(4)); float v; std::memcpy(&v, &u, 4); t.f32.push_back(v); }); break;
      case 5: repeated(r, w, where, [&](Reader& x) { t.i32.push_back(static_cast<int32_t>(static_cast<uint32_t>(x.varint()))); }); break;
      case 6: { Bytes s = r.bytes(); t.strs.emplace_back(reinterpret_cast<const char*>(s.p), s.n); break; }
      case 7: repeated(r, w, where, [&](Reader& x) { t.i64.push_back(static_cast<int64_t>(x.varint())); }); break;
      case 8: { Bytes s = r.bytes(); t.name.assign(reinterpret_cast<const char*>(s.p), s.n); break; }
      case 9: { Bytes s = r.bytes(); t.raw.assign(s.p, s.p + s.n); t.has_raw = true; break; }
      case 10: repeated(r, w, where, [&](Reader& x) { uint64_t u = x.fixed(8); double v; std::memcpy(&v, &u, 8); t.f64.push_back(v); }); break;
      case 11: repeated(r, w, where, [&](Reader& x) { t.u64.push_back(x.varint()); }); break;
      case 14: t.external = r.varint() == 1; break;
      default: r.skip(w);
    }
  }
  return t;
}

// element size of the ONNX data types whose numpy array has the same bytes as raw_data
size_t elemSize(int32_t dt) {
  switch (dt) {
    case 1: case 6: case 12: return 4;            // float, int32, uint32
    case 2: case 3: case 9: return 1;             // uint8, int8, bool
    case 4: case 5: case 10: case 16: return 2;   // uint16, int16, float16, bfloat16
    case 7: case 11: case 13: return 8;           // int64, double, uint64
    case 17: case 18: case 19: case 20: return 1; // float8 variants
    default: return 0;                            // string (8), complex (14, 15), 4-bit (21-23, 25+): special
  }
}

template <class T>
void putLE(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));   // x86-64 and aarch64 are little-endian
  out.insert(out.end(), b, b + sizeof(T));
}

std::vector<uint8_t> elementBytes(const TensorRec& t, const std::string& where) {
  const std::string what = where + ": tensor '" + t.name + "'";
  if (t.external) throw std::runtime_error(what + " keeps its data outside the file; the C++ weight check needs it inside");
  size_t numel = 1;
  for (auto d : t.dims) numel *= static_cast<size_t>(d);
  std::vector<uint8_t> out;
  if (t.data_type == 8) {   // strings: u64 length + UTF-8 bytes each
    for (auto& s : t.strs) { putLE<uint64_t>(out, s.size()); out.insert(out.end(), s.begin(), s.end()); }
    return out;
  }
  size_t es = elemSize(t.data_type);
  if (es == 0) throw std::runtime_error(what + " has data_type " + std::to_string(t.data_type) + ", which the C++ weight check does not read");
  if (t.has_raw) {
    if (t.raw.size() != numel * es) throw std::runtime_error(what + ": raw_data size does not match its shape");
    return t.raw;
  }
  out.reserve(numel * es);
  switch (t.data_type) {
    case 1: for (float v : t.f32) putLE(out, v); break;
    case 6: for (auto v : t.i32) putLE(out, static_cast<int32_t>(v)); break;
    case 2: case 9: case 17: case 18: case 19: case 20: for (auto v : t.i32) putLE(out, static_cast<uint8_t>(v)); break;
    case 3: for (auto v : t.i32) putLE(out, static_cast<int8_t>(v)); break;
    case 4: case 10: case 16: for (auto v : t.i32) putLE(out, static_cast<uint16_t>(v)); break;
    case 5: for (auto v : t.i32) putLE(out, static_cast<int16_t>(v)); break;
    case 7: for (auto v : t.i64) putLE(out, v); break;
    case 11: for (double v : t.f64) putLE(out, v); break;
    case 12: for (auto v : t.u64) putLE(out, static_cast<uint32_t>(v)); break;
    case 13: for (auto v : t.u64) putLE(out, v); break;
  }
  if (out.size() != numel * es) throw std::runtime_error(what + ": its data does not match its shape");
  return out;
}

}  // namespace

std::string onnxWeightsSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  if (!in) throw std::runtime_error(path + ": cannot read the file");
  std::vector<uint8_t> buf(static_cast<size_t>(in.tellg()));
  in.seekg(0);
  in.read(reinterpret_cast<char*>(buf.data()), static_cast<std::streamsize>(buf.size()));
  std::vector<TensorRec> ts;
  Reader model(Bytes{buf.data(), buf.size()}, path);
  uint32_t f, w;
  while (model.next(f, w)) {
    if (f != 7 || w != 2) { model.skip(w); continue; }   // ModelProto.graph
    Reader graph(model.bytes(), path);
    while (graph.next(f, w)) {
      if (f == 5 && w == 2) {   // GraphProto.initializer
        ts.push_back(parseTensor(graph.bytes(), path));
      } else if (f == 1 && w == 2) {   // GraphProto.node: Constant nodes' `value`
        Reader node(graph.bytes(), path);
        std::string op, domain, out0;
        bool have_out = false;
        std::vector<TensorRec> vals;
        while (node.next(f, w)) {
          if (f == 2 && w == 2) { Bytes s = node.bytes(); if (!have_out) { out0.assign(reinterpret_cast<const char*>(s.p), s.n); have_out = true; } }
          else if (f == 4 && w == 2) { Bytes s = node.bytes(); op.assign(reinterpret_cast<const char*>(s.p), s.n); }
          else if (f == 7 && w == 2) { Bytes s = node.bytes(); domain.assign(reinterpret_cast<const char*>(s.p), s.n); }
          else if (f == 5 && w == 2) {   // AttributeProto: name (1), t (5)
            Reader attr(node.bytes(), path);
            std::string aname;
            Bytes t;
            bool has_t = false;
            while (attr.next(f, w)) {
              if (f == 1 && w == 2) { Bytes s = attr.bytes(); aname.assign(reinterpret_cast<const char*>(s.p), s.n); }
              else if (f == 5 && w == 2) { t = attr.bytes(); has_t = true; }
              else attr.skip(w);
            }
            if (aname == "value" && has_t) vals.push_back(parseTensor(t, path));
          } else node.skip(w);
        }
        if (op == "Constant" && (domain.empty() || domain == "ai.onnx") && have_out)
          for (auto& v : vals) { v.name = out0; ts.push_back(std::move(v)); }
      } else {
        graph.skip(w);
      }
    }
  }
  std::stable_sort(ts.begin(), ts.end(), [](const TensorRec& a, const TensorRec& b) { return a.name < b.name; });
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  auto upd = [&](const std::vector<uint8_t>& v) { EVP_DigestUpdate(ctx.get(), v.data(), v.size()); };
  const char header[] = "facelab-onnx-weights/1\n";
  EVP_DigestUpdate(ctx.get(), header, sizeof(header) - 1);
  for (auto& t : ts) {
    std::vector<uint8_t> h;
    putLE<uint64_t>(h, t.name.size());
    h.insert(h.end(), t.name.begin(), t.name.end());
    putLE<int32_t>(h, t.data_type);
    putLE<uint64_t>(h, t.dims.size());
    for (auto d : t.dims) putLE<int64_t>(h, d);
    auto e = elementBytes(t, path);
    putLE<uint64_t>(h, e.size());
    upd(h);
    upd(e);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &n);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < n; ++i) { s += hex[md[i] >> 4]; s += hex[md[i] & 15]; }
  return s;
}

}  // namespace facelab
