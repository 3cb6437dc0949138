// EngineBase: one ONNX Runtime session per engine, hot-swapped atomically after validation and warm-up.
#pragma once
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "facelab/config.h"

namespace Ort { struct Env; struct Session; }

namespace facelab {

// A model that breaks the task contract or its metadata; thrown inside reloadModel, returned as its error text.
struct ModelError : std::runtime_error { using std::runtime_error::runtime_error; };

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;
  size_t numel() const;
};

struct Preprocess {
  std::vector<float> mean, std;   // per model input channel
  std::string color_order = "RGB";
};

// What a loaded model is: read from the session and the facelab metadata, checked against the task contract.
struct ModelInfo {
  std::string path, task, sha256, input_name;
  std::vector<int64_t> input_shape;                 // from the metadata; -1 marks a dynamic batch
  std::vector<std::string> output_names, class_names;
  Preprocess pre;                                   // metadata, then the config's overrides
  nlohmann::json metadata;                          // every metadata key, JSON-decoded
};

struct LoadedModel {
  std::shared_ptr<Ort::Session> session;
  ModelInfo info;
  uint64_t generation = 0;                          // 1 for the first model, +1 on each successful reload
};

// The process-wide ONNX Runtime environment (one Ort::Env per process).
Ort::Env& ortEnv();
// sha256 of a file as lowercase hex; throws ModelError naming the file when unreadable.
std::string sha256File(const std::string& path);

class EngineBase {
 public:
  EngineBase(std::string task, SessionConfig threads = {});
  virtual ~EngineBase();
  EngineBase(const EngineBase&) = delete;
  EngineBase& operator=(const EngineBase&) = delete;

  // Build a session for `mc.path` off the hot path, validate it (contract, metadata, sha256 when given), warm it up and
  // check its outputs are finite; only then swap it in. Returns "" on success, else the error, and the old model (if
  // any) keeps serving. Inferences already running finish on the session they started with.
  std::string reloadModel(const ModelConfig& mc);
  std::string reloadModel(const std::string& path);

  bool loaded() const { return static_cast<bool>(snapshot()); }
  const std::string& task() const { return task_; }
  std::shared_ptr<const LoadedModel> snapshot() const;   // the model now serving (may be null)
  void setSessionConfig(const SessionConfig& s);          // used by the next reload
  SessionConfig sessionConfig() const;

  // Run the serving model on one input tensor; outputs in the model's output order. Throws when nothing is loaded.
  std::vector<Tensor> runTensor(const Tensor& input) const;
  static std::vector<Tensor> run(const LoadedModel& m, const Tensor& input);

 protected:
  // The task's contract: throw ModelError when `info` (or the session's declared outputs) breaks it.
  virtual void validate(const ModelInfo& info) const = 0;
  // Checks of the warm-up outputs besides finiteness (e.g. shapes); default: none.
  virtual void validateOutputs(const ModelInfo&, const std::vector<Tensor>&) const {}
  // Called after a successful swap (e.g. to reset stream state when the input size changed).
  virtual void onSwap(const LoadedModel&) {}
  std::shared_ptr<const LoadedModel> require() const;

  std::string task_;

 private:
  std::shared_ptr<const LoadedModel> load(const ModelConfig& mc, uint64_t generation) const;
  std::shared_ptr<const LoadedModel> current_;   // accessed only through std::atomic_load / std::atomic_store
  mutable std::mutex reload_mu_;                 // one reload at a time; never taken by inference
  SessionConfig threads_;
};

// Helpers for the engines.
std::vector<float> softmax(const float* z, size_t n);
size_t argmax(const std::vector<float>& v);

}  // namespace facelab
