#include "facelab/engine_base.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <onnxruntime_cxx_api.h>
#include <openssl/evp.h>

#include "facelab/onnx_weights.h"

namespace fs = std::filesystem;
using nlohmann::json;

namespace facelab {

size_t Tensor::numel() const {
  size_t n = 1;
  for (auto d : shape) n *= static_cast<size_t>(d);
  return n;
}

Ort::Env& ortEnv() {
  static Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "facelab");
  return env;
}

std::string sha256File(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ModelError(path + ": cannot read the file");
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw ModelError("sha256: OpenSSL init failed");
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), md, &n);
  std::string hex;
  char b[3];
  for (unsigned i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%02x", md[i]);
    hex += b;
  }
  return hex;
}

std::vector<float> softmax(const float* z, size_t n) {
  // float64 accumulation, as facelab.predict does
  double m = -INFINITY;
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(z[i]));
  std::vector<double> e(n);
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += e[i] = std::exp(static_cast<double>(z[i]) - m);
  std::vector<float> p(n);
  for (size_t i = 0; i < n; ++i) p[i] = static_cast<float>(e[i] / s);
  return p;
}

size_t argmax(const std::vector<float>& v) {
  return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

EngineBase::EngineBase(std::string task, SessionConfig threads) : task_(std::move(task)), threads_(threads) {
  ortEnv();
}
EngineBase::~EngineBase() = default;

std::shared_ptr<const LoadedModel> EngineBase::snapshot() const { return std::atomic_load(&current_); }

void EngineBase::setSessionConfig(const SessionConfig& s) {
  std::lock_guard<std::mutex> g(reload_mu_);
  threads_ = s;
}
SessionConfig EngineBase::sessionConfig() const {
  std::lock_guard<std::mutex> g(reload_mu_);
  return threads_;
}

std::shared_ptr<const LoadedModel> EngineBase::require() const {
  auto m = snapshot();
  if (!m) throw ModelError(task_ + " engine: no model loaded");
  return m;
}

std::vector<Tensor> EngineBase::runTensor(const Tensor& input) const { return run(*require(), input); }

std::vector<Tensor> EngineBase::run(const LoadedModel& m, const Tensor& input) {
  Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  Ort::Value in = Ort::Value::CreateTensor<float>(mem, const_cast<float*>(input.data.data()), input.data.size(),
                                                  input.shape.data(), input.shape.size());
  const char* in_name = m.info.input_name.c_str();
  std::vector<const char*> out_names;
  for (auto& n : m.info.output_names) out_names.push_back(n.c_str());
  auto outs = m.session->Run(Ort::RunOptions{nullptr}, &in_name, &in, 1, out_names.data(), out_names.size());
  std::vector<Tensor> res;
  for (auto& o : outs) {
    auto ti = o.GetTensorTypeAndShapeInfo();
    if (ti.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw ModelError(m.info.path + ": an output is not float32");
    Tensor t;
    t.shape = ti.GetShape();
    const float* p = o.GetTensorData<float>();
    t.data.assign(p, p + ti.GetElementCount());
    res.push_back(std::move(t));
  }
  return res;
}

namespace {

json decodeMeta(const std::string& v) {
  json j = json::parse(v, nullptr, false);
  return j.is_discarded() ? json(v) : j;
}

template <class T>
T metaGet(const ModelInfo& info, const char* key) {
  if (!info.metadata.contains(key))
    throw ModelError(info.path + ": metadata key '" + key + "' missing (was it written by `facelab export`?)");
  try {
    return info.metadata.at(key).get<T>();
  } catch (const json::exception& e) {
    throw ModelError(info.path + ": metadata key '" + key + "' has the wrong type (" + e.what() + ")");
  }
}

std::string shapeStr(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); ++i) r += (i ? "," : "") + std::to_string(s[i]);
  return r + "]";
}

bool strictIntegrity() {
  const char* v = std::getenv("FACELAB_STRICT_INTEGRITY");
  if (!v) return false;
  std::string s(v);
  std::transform(s.begin(), s.end(), s.begin(), ::tolower);
  return s == "1" || s == "true" || s == "yes";
}

// The weight hash `facelab export` writes (facelab.integrity): recomputed from the file and compared. A model without
// one loads, unless FACELAB_STRICT_INTEGRITY is set (as in Python).
void verifyWeights(const ModelInfo& info) {
  if (!info.metadata.contains(kWeightsSha256Key)) {
    if (strictIntegrity())
      throw ModelError(info.path + ": no '" + kWeightsSha256Key + "' in its metadata, so its weights cannot be verified "
                       "(FACELAB_STRICT_INTEGRITY is set; re-export it)");
    return;
  }
  const auto& rec = info.metadata[kWeightsSha256Key];
  if (!rec.is_string()) throw ModelError(info.path + ": metadata '" + kWeightsSha256Key + "' is not a string");
  std::string got;
  try {
    got = onnxWeightsSha256(info.path);
  } catch (const std::exception& e) {
    throw ModelError(info.path + ": cannot verify its weights (" + e.what() + ")");
  }
  if (got != rec.get<std::string>())
    throw ModelError(info.path + ": weights do not match the " + kWeightsSha256Key + " in its metadata (recorded " +
                     rec.get<std::string>().substr(0, 12) + "..., found " + got.substr(0, 12) +
                     "...): the file is corrupt or was modified");
}

}  // namespace

std::shared_ptr<const LoadedModel> EngineBase::load(const ModelConfig& mc, uint64_t generation) const {
  const std::string& path = mc.path;
  if (!fs::is_regular_file(path)) throw ModelError(path + ": model file not found");
  auto lm = std::make_shared<LoadedModel>();
  ModelInfo& info = lm->info;
  info.path = path;
  if (!mc.sha256.empty()) {
    info.sha256 = sha256File(path);
    if (info.sha256 != mc.sha256)
      throw ModelError(path + ": sha256 " + info.sha256 + " differs from the config's " + mc.sha256 +
                       " (a different or half-written file)");
  }
  Ort::SessionOptions so;
  SessionConfig th = threads_;
  so.SetIntraOpNumThreads(th.intra_op);
  so.SetInterOpNumThreads(th.inter_op);
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  so.AddConfigEntry("session.intra_op.allow_spinning", "0");   // as facelab.export.onnx_session: no spinning
  so.AddConfigEntry("session.inter_op.allow_spinning", "0");
  try {
    lm->session = std::make_shared<Ort::Session>(ortEnv(), path.c_str(), so);
  } catch (const Ort::Exception& e) {
    throw ModelError(path + ": ONNX Runtime cannot load it (" + e.what() + ")");
  }
  Ort::Session& s = *lm->session;
  Ort::AllocatorWithDefaultOptions alloc;
  {
    Ort::ModelMetadata md = s.GetModelMetadata();
    json meta = json::object();
    for (auto& k : md.GetCustomMetadataMapKeysAllocated(alloc)) {
      std::string key = k.get();
      meta[key] = decodeMeta(md.LookupCustomMetadataMapAllocated(key.c_str(), alloc).get());
    }
    info.metadata = std::move(meta);
  }
  verifyWeights(info);
  info.task = metaGet<std::string>(info, "task");
  if (info.task != task_) throw ModelError(path + ": metadata task is '" + info.task + "', this is the " + task_ + " engine");
  info.input_name = metaGet<std::string>(info, "input_name");
  info.input_shape = metaGet<std::vector<int64_t>>(info, "input_shape");
  info.output_names = metaGet<std::vector<std::string>>(info, "output_names");
  info.class_names = metaGet<std::vector<std::string>>(info, "class_names");
  // the session's declared signature against the metadata
  if (s.GetInputCount() != 1) throw ModelError(path + ": " + std::to_string(s.GetInputCount()) + " inputs, the contract has 1");
  std::string in_name = s.GetInputNameAllocated(0, alloc).get();
  if (in_name != info.input_name)
    throw ModelError(path + ": input is named '" + in_name + "', the metadata says '" + info.input_name + "'");
  {
    Ort::TypeInfo type = s.GetInputTypeInfo(0);   // owns what the view below points into
    auto ti = type.GetTensorTypeAndShapeInfo();
    if (ti.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw ModelError(path + ": input is not float32");
    auto shp = ti.GetShape();
    if (shp.size() != info.input_shape.size())
      throw ModelError(path + ": input shape " + shapeStr(shp) + " has a different rank from the metadata's " +
                       shapeStr(info.input_shape));
    for (size_t i = 0; i < shp.size(); ++i) {
      bool ok = (i == 0) ? (shp[0] == info.input_shape[0] || (shp[0] < 0 && info.input_shape[0] < 0) ||
                            (shp[0] < 0 && info.input_shape[0] == 1))
                         : (shp[i] == info.input_shape[i] && shp[i] > 0);
      if (!ok)
        throw ModelError(path + ": input shape " + shapeStr(shp) + " differs from the metadata's " + shapeStr(info.input_shape));
    }
  }
  std::vector<std::string> outs;
  for (size_t i = 0; i < s.GetOutputCount(); ++i) {
    outs.push_back(s.GetOutputNameAllocated(i, alloc).get());
    Ort::TypeInfo type = s.GetOutputTypeInfo(i);
    if (type.GetTensorTypeAndShapeInfo().GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw ModelError(path + ": output '" + outs.back() + "' is not float32");
  }
  if (outs != info.output_names) throw ModelError(path + ": the graph's outputs differ from the metadata's output_names");
  validate(info);
  if (task_ != "spotting") {
    info.pre.mean = mc.preprocess.mean.value_or(metaGet<std::vector<float>>(info, "mean"));
    info.pre.std = mc.preprocess.std.value_or(metaGet<std::vector<float>>(info, "std"));
    info.pre.color_order = mc.preprocess.color_order.value_or(metaGet<std::string>(info, "color_order"));
    std::transform(info.pre.color_order.begin(), info.pre.color_order.end(), info.pre.color_order.begin(), ::toupper);
    if (info.pre.mean.size() != 3 || info.pre.std.size() != 3)
      throw ModelError(path + ": mean and std need 3 values (one per colour channel)");
    for (float v : info.pre.std)
      if (!(v > 0)) throw ModelError(path + ": std values must be > 0");
    if (info.pre.color_order != "RGB" && info.pre.color_order != "BGR")
      throw ModelError(path + ": color_order '" + info.pre.color_order + "' (RGB or BGR)");
  }
  // warm-up: a deterministic input in [-1, 1); every output must be finite
  Tensor x;
  x.shape = info.input_shape;
  if (x.shape[0] < 0) x.shape[0] = 1;
  x.data.resize(x.numel());
  uint32_t r = 12345;
  for (auto& v : x.data) {
    r = r * 1664525u + 1013904223u;
    v = static_cast<float>(r >> 8) / static_cast<float>(1u << 23) - 1.f;
  }
  std::vector<Tensor> y;
  try {
    y = run(*lm, x);
  } catch (const Ort::Exception& e) {
    throw ModelError(path + ": warm-up inference failed (" + e.what() + ")");
  }
  for (size_t i = 0; i < y.size(); ++i)
    for (float v : y[i].data)
      if (!std::isfinite(v))
        throw ModelError(path + ": warm-up output '" + info.output_names[i] + "' is not finite (NaN or Inf)");
  validateOutputs(info, y);
  lm->generation = generation;
  return lm;
}

std::string EngineBase::reloadModel(const std::string& path) {
  ModelConfig mc;
  mc.path = path;
  return reloadModel(mc);
}

std::string EngineBase::reloadModel(const ModelConfig& mc) {
  std::lock_guard<std::mutex> g(reload_mu_);
  try {
    auto old = snapshot();
    auto fresh = load(mc, old ? old->generation + 1 : 1);
    std::atomic_store(&current_, fresh);
    onSwap(*fresh);
    return "";
  } catch (const ModelError& e) {
    return e.what();
  } catch (const Ort::Exception& e) {
    return mc.path + ": ONNX Runtime error (" + e.what() + ")";
  } catch (const std::exception& e) {
    return mc.path + ": " + e.what();
  }
}

}  // namespace facelab
