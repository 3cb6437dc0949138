#include "facelab/au_engine.h"

#include <algorithm>

#include "facelab/macro_engine.h"
#include "facelab/preprocess.h"

namespace facelab {

void AuEngine::validate(const ModelInfo& info) const {
  validateImageInput(info);
  if (info.output_names != std::vector<std::string>{"au_prob", "au_intensity"})
    throw ModelError(info.path + ": au models have the outputs 'au_prob', 'au_intensity'");
  if (info.class_names.empty()) throw ModelError(info.path + ": metadata class_names (the AU names) is empty");
  if (info.metadata.contains("thresholds")) {
    const auto& t = info.metadata["thresholds"];
    if (!t.is_array() || t.size() != info.class_names.size())
      throw ModelError(info.path + ": metadata 'thresholds' must list one number per AU");
  }
}

void AuEngine::validateOutputs(const ModelInfo& info, const std::vector<Tensor>& y) const {
  validateOutput2D(info, y[0], "au_prob", info.class_names.size());
  validateOutput2D(info, y[1], "au_intensity", info.class_names.size());
}

void AuEngine::setThresholds(const std::map<std::string, float>& t) {
  if (auto m = snapshot())
    for (auto& [au, v] : t)
      if (std::find(m->info.class_names.begin(), m->info.class_names.end(), au) == m->info.class_names.end())
        throw std::invalid_argument("threshold for " + au + ", which " + m->info.path + " does not predict");
  std::atomic_store(&cfg_thr_, std::shared_ptr<const std::map<std::string, float>>(std::make_shared<std::map<std::string, float>>(t)));
}

std::vector<float> AuEngine::thresholds(const ModelInfo& info) const {
  std::vector<float> thr(info.class_names.size(), 0.5f);
  if (info.metadata.contains("thresholds") && info.metadata["thresholds"].is_array())
    for (size_t i = 0; i < thr.size(); ++i) thr[i] = info.metadata["thresholds"][i].get<float>();
  auto cfg = std::atomic_load(&cfg_thr_);
  for (size_t i = 0; i < thr.size(); ++i) {
    auto it = cfg->find(info.class_names[i]);
    if (it != cfg->end()) thr[i] = it->second;
  }
  return thr;
}

std::vector<AuResult> AuEngine::results(const ModelInfo& info, const std::vector<float>& thr, const Tensor& prob,
                                        const Tensor& intensity) {
  std::vector<AuResult> r(info.class_names.size());
  for (size_t i = 0; i < r.size(); ++i) {
    r[i].au = info.class_names[i];
    r[i].probability = prob.data[i];
    r[i].intensity = intensity.data[i];
    r[i].threshold = thr[i];
    r[i].present = prob.data[i] >= thr[i];
  }
  return r;
}

std::vector<AuResult> AuEngine::predict(const cv::Mat& bgr) const {
  auto m = require();
  auto out = run(*m, imageTensor(m->info, bgr));
  validateOutputs(m->info, out);
  return results(m->info, thresholds(m->info), out[0], out[1]);
}

std::vector<AuResult> AuEngine::predict(const cv::Mat& frame, const cv::Rect& face_box) const {
  return predict(cropBox(frame, face_box));
}

}  // namespace facelab
