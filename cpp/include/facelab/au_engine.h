// AuEngine: a face crop -> per-AU presence, probability and intensity (outputs au_prob, au_intensity).
#pragma once
#include <map>
#include <memory>

#include <opencv2/core.hpp>

#include "facelab/engine_base.h"

namespace facelab {

struct AuResult {
  std::string au;
  bool present = false;   // probability >= threshold (facelab.predict's rule)
  float probability = 0, intensity = 0, threshold = 0.5f;
};

class AuEngine : public EngineBase {
 public:
  explicit AuEngine(SessionConfig threads = {}) : EngineBase("au", threads) {}
  std::vector<AuResult> predict(const cv::Mat& bgr) const;
  std::vector<AuResult> predict(const cv::Mat& frame, const cv::Rect& face_box) const;
  // Per-AU thresholds from the config; they override the metadata's 'thresholds' (default 0.5). Unknown AUs are errors.
  void setThresholds(const std::map<std::string, float>& t);
  std::vector<float> thresholds(const ModelInfo& info) const;
  static std::vector<AuResult> results(const ModelInfo& info, const std::vector<float>& thr, const Tensor& prob,
                                       const Tensor& intensity);

 protected:
  void validate(const ModelInfo& info) const override;
  void validateOutputs(const ModelInfo& info, const std::vector<Tensor>& y) const override;

 private:
  std::shared_ptr<const std::map<std::string, float>> cfg_thr_ = std::make_shared<std::map<std::string, float>>();
};

}  // namespace facelab
