// Pipeline: every engine the config names, with live config apply (only changed models reload).
#pragma once
#include <memory>
#include <optional>

#include "facelab/au_engine.h"
#include "facelab/config.h"
#include "facelab/macro_engine.h"
#include "facelab/micro_engine.h"
#include "facelab/spotting_engine.h"

namespace facelab {

struct FrameResult {
  int64_t frame = 0;
  std::optional<ClassResult> macro;
  std::optional<MicroResult> micro;      // set on the frames where a window was due
  std::optional<std::vector<AuResult>> au;
  std::vector<SpotInterval> spotting;    // intervals the spotting model closed on this frame
  std::vector<SpotInterval> flow;        // intervals the optical-flow baseline closed on this frame
  float flow_magnitude = 0;
  std::map<std::string, double> latency_ms;   // per engine, and "total"
};

class Pipeline {
 public:
  Pipeline() = default;
  // Apply a config: models whose path, sha256 or preprocessing changed (or all, when threads changed) are reloaded
  // through reloadModel (a failed reload keeps the old model); stride, thresholds and fps are set in place. Tasks no
  // longer in the config are dropped. Returns the errors ("" entries are not kept); an empty result means all applied.
  std::vector<std::string> apply(const EngineConfig& c);
  const EngineConfig& config() const { return cfg_; }

  // One frame (a face crop, 8-bit BGR) of `track`; `features` feed the spotting model when it is configured.
  FrameResult process(const cv::Mat& bgr, const std::string& track = "", const std::vector<float>* features = nullptr);
  // End of stream: flushes the spotting engines.
  FrameResult finish();

  MacroEngine* macro() { return macro_.get(); }
  MicroEngine* micro() { return micro_.get(); }
  AuEngine* au() { return au_.get(); }
  SpottingEngine* spotting() { return spot_.get(); }

 private:
  EngineConfig cfg_;
  bool have_cfg_ = false;
  std::unique_ptr<MacroEngine> macro_;
  std::unique_ptr<MicroEngine> micro_;
  std::unique_ptr<AuEngine> au_;
  std::unique_ptr<SpottingEngine> spot_;
  OpticalFlowSpotter flow_;
  int64_t frame_ = 0;
};

}  // namespace facelab
