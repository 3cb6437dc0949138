// SpottingEngine: per-frame features -> micro/macro-expression intervals, online. OpticalFlowSpotter: the threshold
// baseline (mean optical-flow magnitude), kept for A/B.
#pragma once
#include <deque>
#include <map>
#include <mutex>

#include <opencv2/core.hpp>

#include "facelab/config.h"
#include "facelab/engine_base.h"

namespace facelab {

struct SpotInterval {
  std::string kind;
  int64_t onset = 0, offset = 0;   // frame indices, inclusive
  float score = 0;
};

struct KindDecoder {
  float act_thr = 0.5f, score_thr = 0.3f, min_len_s = 0.1f, max_len_s = 0.6f;
};

// Online decoding. The model runs on windows of W frames every S frames (W, S from the metadata: window, stride);
// per-frame scores are the window-weighted mean of the windows covering the frame, as facelab.models.spotting's
// predict_scores. A frame's scores are final once no later window covers it (at most W-1 frames later). Intervals are
// runs of 3-frame-smoothed actionness >= act_thr whose length lies in [min_len_s, max_len_s] * fps, scored by mean
// actionness * (0.5 + 0.5 sqrt(start(onset) * end(offset))) and kept when >= score_thr. An interval is emitted at most
// W + 1 frames after its offset (latencyFrames()). flush() ends the stream: it runs a last window over the final frames
// and emits what is still open. Differences from Python's batch decoder: no start/end-peak proposals and no NMS, and
// Python's extra end-aligned window only reaches the frames flush() finalises.
class SpottingEngine : public EngineBase {
 public:
  explicit SpottingEngine(SessionConfig threads = {}) : EngineBase("spotting", threads) {}
  std::vector<SpotInterval> push(const std::vector<float>& features);
  std::vector<SpotInterval> flush();
  void reset();
  void setFps(double fps);
  int64_t latencyFrames() const;
  size_t featureCount() const;
  // Finalised per-frame scores (kinds x 3 per frame) still held: every frame of the stream after keepScores(true)
  // (tests, logging), else only the few frames decoding still needs (memory stays bounded on long streams).
  std::vector<std::vector<float>> scores() const;
  void keepScores(bool keep);

 protected:
  void validate(const ModelInfo& info) const override;
  void validateOutputs(const ModelInfo& info, const std::vector<Tensor>& y) const override;
  void onSwap(const LoadedModel&) override;

 private:
  struct KindState {
    std::string kind;
    KindDecoder dec;
    bool open = false;
    int64_t onset = 0;
    double act_sum = 0;
    int64_t next = 0;   // next frame to decode
  };
  void runWindow(const LoadedModel& m, int64_t start, std::vector<float> x);
  std::vector<SpotInterval> finalise(int64_t upto, bool end);
  void setup(const LoadedModel& m);

  mutable std::mutex mu_;
  uint64_t gen_ = 0;
  int64_t W_ = 0, S_ = 0, F_ = 0, n_ = 0, next_start_ = 0, final_ = 0;
  double fps_ = 30.0;
  std::vector<float> weight_;
  std::deque<std::vector<float>> feats_;        // the last W frames of features
  std::map<int64_t, std::vector<float>> acc_;   // frame -> weighted score sums (kinds*3) + weight sum (last)
  std::deque<std::vector<float>> final_scores_;
  int64_t base_ = 0;   // frame index of final_scores_.front()
  bool keep_scores_ = false;
  std::vector<KindState> kinds_;
};

// Threshold baseline: mean Farneback optical-flow magnitude between consecutive grey frames; a run of frames above
// `threshold` with min_frames <= length <= max_frames is an interval (kind "motion", score = peak magnitude), emitted
// one frame after it ends.
class OpticalFlowSpotter {
 public:
  explicit OpticalFlowSpotter(FlowSpotterConfig c = {}) : cfg_(c) {}
  std::vector<SpotInterval> push(const cv::Mat& bgr);
  std::vector<SpotInterval> pushMagnitude(float magnitude);   // the decision rule alone
  std::vector<SpotInterval> flush();
  void reset();
  void setConfig(const FlowSpotterConfig& c) { cfg_ = c; }
  float lastMagnitude() const { return last_mag_; }

 private:
  std::vector<SpotInterval> close();
  FlowSpotterConfig cfg_;
  cv::Mat prev_;
  int64_t n_ = 0, onset_ = 0;
  bool open_ = false;
  float peak_ = 0, last_mag_ = 0;
};

}  // namespace facelab
