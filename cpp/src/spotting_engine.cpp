#include "facelab/spotting_engine.h"

#include <algorithm>
#include <cmath>

#include <opencv2/imgproc.hpp>
#include <opencv2/video/tracking.hpp>

namespace facelab {

void SpottingEngine::validate(const ModelInfo& info) const {
  const auto& s = info.input_shape;
  if (s.size() != 3 || s[0] != 1 || s[1] <= 0 || s[2] <= 0)
    throw ModelError(info.path + ": spotting input '" + info.input_name + "' must be [1, window, features]");
  for (const char* k : {"kinds", "window", "stride", "decoder"})
    if (!info.metadata.contains(k)) throw ModelError(info.path + ": metadata key '" + std::string(k) + "' missing");
  auto kinds = info.metadata["kinds"].get<std::vector<std::string>>();
  std::vector<std::string> want;
  for (auto& k : kinds) want.push_back(k + "_scores");
  if (info.output_names != want) throw ModelError(info.path + ": outputs must be <kind>_scores for kinds in the metadata");
  if (info.metadata["window"].get<int64_t>() != s[1])
    throw ModelError(info.path + ": metadata window differs from the input's " + std::to_string(s[1]) + " frames");
  int64_t st = info.metadata["stride"].get<int64_t>();
  if (st < 1 || st > s[1]) throw ModelError(info.path + ": metadata stride must be in [1, window]");
  for (auto& k : kinds)
    if (!info.metadata["decoder"].contains(k)) throw ModelError(info.path + ": metadata decoder has no '" + k + "' entry");
}

void SpottingEngine::validateOutputs(const ModelInfo& info, const std::vector<Tensor>& y) const {
  for (size_t i = 0; i < y.size(); ++i)
    if (y[i].shape != std::vector<int64_t>{1, info.input_shape[1], 3})
      throw ModelError(info.path + ": output '" + info.output_names[i] + "' must be [1, window, 3]");
}

void SpottingEngine::setup(const LoadedModel& m) {
  const auto& md = m.info.metadata;
  W_ = m.info.input_shape[1];
  F_ = m.info.input_shape[2];
  S_ = md["stride"].get<int64_t>();
  weight_.resize(static_cast<size_t>(W_));
  for (int64_t i = 0; i < W_; ++i) {   // predict_scores' window weights
    float w = static_cast<float>(std::min(i + 1, W_ - i));
    weight_[static_cast<size_t>(i)] = std::min(w / (static_cast<float>(W_) / 4.f), 1.0f) + 1e-3f;
  }
  kinds_.clear();
  for (auto& k : md["kinds"].get<std::vector<std::string>>()) {
    KindState ks;
    ks.kind = k;
    const auto& d = md["decoder"][k];
    ks.dec.act_thr = d.value("act_thr", 0.5f);
    ks.dec.score_thr = d.value("score_thr", 0.3f);
    ks.dec.min_len_s = d.value("min_len_s", 0.1f);
    ks.dec.max_len_s = d.value("max_len_s", 0.6f);
    kinds_.push_back(ks);
  }
  gen_ = m.generation;
  n_ = next_start_ = final_ = 0;
  feats_.clear();
  acc_.clear();
  final_scores_.clear();
  base_ = 0;
}

void SpottingEngine::onSwap(const LoadedModel& m) {
  std::lock_guard<std::mutex> g(mu_);
  setup(m);   // a new model starts a new stream
}

void SpottingEngine::keepScores(bool keep) {
  std::lock_guard<std::mutex> g(mu_);
  keep_scores_ = keep;
}

void SpottingEngine::reset() {
  std::lock_guard<std::mutex> g(mu_);
  if (auto m = snapshot()) setup(*m);
}

void SpottingEngine::setFps(double fps) {
  std::lock_guard<std::mutex> g(mu_);
  if (!(fps > 0)) throw std::invalid_argument("fps must be > 0");
  fps_ = fps;
}

int64_t SpottingEngine::latencyFrames() const {
  auto m = require();
  return m->info.input_shape[1] + 1;
}

size_t SpottingEngine::featureCount() const { return static_cast<size_t>(require()->info.input_shape[2]); }

std::vector<std::vector<float>> SpottingEngine::scores() const {
  std::lock_guard<std::mutex> g(mu_);
  return {final_scores_.begin(), final_scores_.end()};
}

void SpottingEngine::runWindow(const LoadedModel& m, int64_t start, std::vector<float> x) {
  Tensor t;
  t.shape = {1, W_, F_};
  t.data = std::move(x);
  auto out = run(m, t);
  validateOutputs(m.info, out);
  const size_t K = out.size();
  for (int64_t i = 0; i < W_; ++i) {
    auto& a = acc_[start + i];
    if (a.empty()) a.assign(3 * K + 1, 0.f);
    float w = weight_[static_cast<size_t>(i)];
    for (size_t k = 0; k < K; ++k)
      for (size_t j = 0; j < 3; ++j) a[3 * k + j] += out[k].data[static_cast<size_t>(3 * i) + j] * w;
    a[3 * K] += w;
  }
}

// Finalise frames < upto (scores = acc / weight) and decode them; `end` closes open runs.
std::vector<SpotInterval> SpottingEngine::finalise(int64_t upto, bool end) {
  std::vector<SpotInterval> out;
  const size_t K = kinds_.size();
  for (; final_ < upto; ++final_) {
    auto it = acc_.find(final_);
    std::vector<float> p(3 * K, 0.f);
    if (it != acc_.end()) {
      for (size_t j = 0; j < 3 * K; ++j) p[j] = it->second[j] / it->second[3 * K];
      acc_.erase(it);
    }
    final_scores_.push_back(p);
  }
  // decode every frame whose smoothed actionness is known: t needs t+1 final (or the end)
  auto act = [&](int64_t t, size_t k) -> double {
    if (t < 0 || t >= final_) return 0.0;
    if (t < base_) throw std::logic_error("spotting: frame " + std::to_string(t) + " was already dropped");
    return static_cast<double>(final_scores_[static_cast<size_t>(t - base_)][3 * k]);
  };
  auto mx = [&](int64_t t, size_t k, size_t j) {   // max over t-1..t+1 (edges: nearest), as maximum_filter1d
    double m = -1;
    if (std::max<int64_t>(0, t - 1) < base_) throw std::logic_error("spotting: frame " + std::to_string(t) + " was already dropped");
    for (int64_t u = std::max<int64_t>(0, t - 1); u <= std::min(final_ - 1, t + 1); ++u)
      m = std::max(m, static_cast<double>(final_scores_[static_cast<size_t>(u - base_)][3 * k + j]));
    return m;
  };
  for (size_t k = 0; k < K; ++k) {
    auto& ks = kinds_[k];
    const int64_t lo = std::max<int64_t>(1, std::llround(ks.dec.min_len_s * fps_));
    const int64_t hi = std::max<int64_t>(2, std::llround(ks.dec.max_len_s * fps_));
    auto close = [&](int64_t off) {
      ks.open = false;
      int64_t n = off - ks.onset + 1;
      if (n < lo || n > hi) return;
      float sc = static_cast<float>(ks.act_sum / static_cast<double>(n) *
                                    (0.5 + 0.5 * std::sqrt(mx(ks.onset, k, 1) * mx(off, k, 2))));
      if (sc >= ks.dec.score_thr) out.push_back({ks.kind, ks.onset, off, sc});
    };
    const int64_t last = end ? final_ : final_ - 1;   // smoothed actionness at f needs frame f+1
    for (int64_t f = ks.next; f < last; ++f) {
      double sm = (act(f - 1, k) + act(f, k) + act(f + 1, k)) / 3.0;
      if (sm >= ks.dec.act_thr) {
        if (!ks.open) { ks.open = true; ks.onset = f; ks.act_sum = 0; }
        ks.act_sum += sm;
      } else if (ks.open) {
        close(f - 1);
      }
    }
    ks.next = std::max(ks.next, last);
    if (end && ks.open) close(final_ - 1);
  }
  if (!keep_scores_) {   // bounded memory: keep only the frames an open run or the next decode step still reads
    int64_t keep = final_;
    for (auto& ks : kinds_) {
      // a run already longer than max_len_s will be dropped: its frames are not needed (only its onset, kept aside)
      const int64_t hi = std::max<int64_t>(2, std::llround(ks.dec.max_len_s * fps_));
      const bool live = ks.open && ks.next - ks.onset <= hi;
      keep = std::min(keep, (live ? ks.onset : ks.next) - 1);
    }
    while (base_ < keep && !final_scores_.empty()) {
      final_scores_.pop_front();
      ++base_;
    }
  }
  std::sort(out.begin(), out.end(), [](const SpotInterval& a, const SpotInterval& b) { return a.onset < b.onset; });
  return out;
}

std::vector<SpotInterval> SpottingEngine::push(const std::vector<float>& features) {
  auto m = require();
  std::lock_guard<std::mutex> g(mu_);
  if (m->generation != gen_) setup(*m);
  if (static_cast<int64_t>(features.size()) != F_)
    throw std::invalid_argument("spotting: " + std::to_string(features.size()) + " features, the model wants " +
                                std::to_string(F_));
  feats_.push_back(features);
  if (static_cast<int64_t>(feats_.size()) > W_) feats_.pop_front();
  ++n_;
  if (n_ < W_ || n_ - W_ != next_start_) return {};
  std::vector<float> x;
  x.reserve(static_cast<size_t>(W_ * F_));
  for (auto& f : feats_) x.insert(x.end(), f.begin(), f.end());
  runWindow(*m, next_start_, std::move(x));
  next_start_ += S_;
  return finalise(next_start_, false);
}

std::vector<SpotInterval> SpottingEngine::flush() {
  auto m = require();
  std::lock_guard<std::mutex> g(mu_);
  if (m->generation != gen_) setup(*m);
  if (n_ == 0) return {};
  const bool aligned = n_ >= W_ && next_start_ > 0 && next_start_ - S_ == n_ - W_;
  if (!aligned) {
    std::vector<float> x;
    for (auto& f : feats_) x.insert(x.end(), f.begin(), f.end());
    while (static_cast<int64_t>(x.size()) < W_ * F_) x.insert(x.end(), feats_.back().begin(), feats_.back().end());
    runWindow(*m, std::max<int64_t>(0, n_ - W_), std::move(x));
  }
  auto out = finalise(n_, true);
  auto scores = std::move(final_scores_);
  int64_t base = base_;
  setup(*m);
  final_scores_ = std::move(scores);   // kept for inspection until the next push starts a stream
  base_ = base;
  return out;
}

std::vector<SpotInterval> OpticalFlowSpotter::close() {
  std::vector<SpotInterval> out;
  open_ = false;
  int64_t len = n_ - 1 - onset_;   // the run ended on the previous frame
  if (len >= cfg_.min_frames && len <= cfg_.max_frames) out.push_back({"motion", onset_, n_ - 2, peak_});
  return out;
}

std::vector<SpotInterval> OpticalFlowSpotter::pushMagnitude(float mag) {
  last_mag_ = mag;
  ++n_;   // this is frame n_-1
  if (mag >= cfg_.threshold) {
    if (!open_) { open_ = true; onset_ = n_ - 1; peak_ = 0; }
    peak_ = std::max(peak_, mag);
    return {};
  }
  return open_ ? close() : std::vector<SpotInterval>{};
}

std::vector<SpotInterval> OpticalFlowSpotter::push(const cv::Mat& bgr) {
  cv::Mat g;
  cv::cvtColor(bgr, g, cv::COLOR_BGR2GRAY);
  if (g.cols > 128) cv::resize(g, g, cv::Size(128, std::max(1, g.rows * 128 / g.cols)), 0, 0, cv::INTER_AREA);
  float mag = 0;
  if (!prev_.empty() && prev_.size() == g.size()) {
    cv::Mat flow;
    cv::calcOpticalFlowFarneback(prev_, g, flow, 0.5, 2, 9, 2, 5, 1.1, 0);
    cv::Mat parts[2], m;
    cv::split(flow, parts);
    cv::magnitude(parts[0], parts[1], m);
    mag = static_cast<float>(cv::mean(m)[0]) * (bgr.cols / static_cast<float>(g.cols));   // in input pixels
  }
  prev_ = g;
  return pushMagnitude(mag);
}

std::vector<SpotInterval> OpticalFlowSpotter::flush() {
  if (!open_) return {};
  ++n_;
  auto out = close();
  --n_;
  return out;
}

void OpticalFlowSpotter::reset() {
  prev_.release();
  n_ = onset_ = 0;
  open_ = false;
  peak_ = last_mag_ = 0;
}

}  // namespace facelab
