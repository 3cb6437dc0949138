// facelab_bench: per-engine and total per-frame latency (P50/P90/P99 after warm-up), and the same models in bare
// ONNX Runtime on the same input tensors, so the engine overhead is a ratio.
//   facelab_bench --config engine.json [--input FRAMES_DIR|VIDEO] [--iters 200] [--warmup 20] [--out bench.json]
//                 [--face-input RAW_FRAMES]   (with a "face" config section: the FaceFrontEnd latency row)
// Rows per engine: "engine" = predict() from a BGR image (preprocessing included), "engine_infer" = the engine's
// inference on a ready tensor (what the bare-ORT row also does), "bare" = a plain Ort::Session with the same options
// (engine_infer and bare runs interleaved);
// ratio = engine_infer P50 / bare P50. "total_per_frame" = Pipeline::process over the frames (micro every `stride`).
#include <chrono>
#include <iostream>
#include <random>

#include <onnxruntime_cxx_api.h>

#include "tool_common.h"

using namespace facelab;
using namespace facelab::tools;
using clk = std::chrono::steady_clock;

namespace {

double msSince(clk::time_point t) { return std::chrono::duration<double, std::milli>(clk::now() - t).count(); }

template <class F>
std::vector<double> timeIt(F&& f, int warmup, int iters) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> v;
  for (int i = 0; i < iters; ++i) {
    auto t = clk::now();
    f();
    v.push_back(msSince(t));
  }
  return v;
}

Tensor inputFor(const LoadedModel& m) {
  Tensor x;
  x.shape = m.info.input_shape;
  if (x.shape[0] < 0) x.shape[0] = 1;
  x.data.resize(x.numel());
  std::mt19937 g(0);
  std::normal_distribution<float> d;
  for (auto& v : x.data) v = d(g);
  return x;
}

// A plain Ort::Session with the engine's options, run on the same tensor.
struct Bare {
  Ort::Session s;
  std::string in_name;
  std::vector<std::string> outs;
  Bare(const std::string& path, const SessionConfig& th, std::vector<std::string> o)
      : s(ortEnv(), path.c_str(), options(th)), outs(std::move(o)) {
    Ort::AllocatorWithDefaultOptions alloc;
    in_name = s.GetInputNameAllocated(0, alloc).get();
  }
  static Ort::SessionOptions options(const SessionConfig& th) {
    Ort::SessionOptions so;
    so.SetIntraOpNumThreads(th.intra_op);
    so.SetInterOpNumThreads(th.inter_op);
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.AddConfigEntry("session.intra_op.allow_spinning", "0");
    so.AddConfigEntry("session.inter_op.allow_spinning", "0");
    return so;
  }
  void run(const Tensor& x) {
    auto mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    Ort::Value v = Ort::Value::CreateTensor<float>(mem, const_cast<float*>(x.data.data()), x.data.size(), x.shape.data(), x.shape.size());
    const char* in = in_name.c_str();
    std::vector<const char*> on;
    for (auto& o : outs) on.push_back(o.c_str());
    s.Run(Ort::RunOptions{nullptr}, &in, &v, 1, on.data(), on.size());
  }
};

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string config, input, out, face_input;
    int iters = 200, warmup = 20;
    for (int i = 1; i < argc; ++i) {
      std::string k = argv[i];
      auto val = [&]() -> std::string {
        if (i + 1 >= argc) throw std::invalid_argument(k + " needs a value");
        return argv[++i];
      };
      if (k == "--config") config = val();
      else if (k == "--input") input = val();
      else if (k == "--face-input") face_input = val();
      else if (k == "--out") out = val();
      else if (k == "--iters") iters = std::stoi(val());
      else if (k == "--warmup") warmup = std::stoi(val());
      else throw std::invalid_argument("unknown argument " + k);
    }
    if (config.empty()) throw std::invalid_argument("--config is required");
    if (iters < 1 || warmup < 0) throw std::invalid_argument("--iters >= 1, --warmup >= 0");
    Pipeline p;
    auto cfg = loadConfig(config);
    auto errors = p.apply(cfg);
    if (!errors.empty()) throw std::runtime_error(config + ": " + errors[0]);
    // frames: the input's, else a fixed random 224x224 face-sized image
    std::vector<cv::Mat> frames;
    if (!input.empty()) {
      FrameSource src(input);
      cv::Mat f;
      std::string n;
      while (src.next(f, n)) frames.push_back(f.clone());
    } else {
      cv::Mat f(224, 224, CV_8UC3);
      cv::randu(f, 0, 256);
      frames.push_back(f);
    }
    json rep = {{"config", config}, {"iters", iters}, {"warmup", warmup},
                {"threads", {{"intra_op", cfg.threads.intra_op}, {"inter_op", cfg.threads.inter_op}}}, {"engines", json::object()}};
    auto row = [&](const std::string& task, EngineBase& e, std::function<void(size_t)> predict) {
      auto m = e.snapshot();
      Tensor x = inputFor(*m);
      size_t k = 0;
      json r = {{"model", m->info.path}, {"input_shape", m->info.input_shape}};
      if (predict) r["engine"] = pct(timeIt([&] { predict(k++ % frames.size()); }, warmup, iters));
      // engine and bare runs interleaved, so load changes on a shared machine hit both alike
      Bare bs(m->info.path, cfg.threads, m->info.output_names);
      std::vector<double> ei, b;
      for (int i = 0; i < warmup + iters; ++i) {
        auto t0 = clk::now();
        e.runTensor(x);
        double d0 = msSince(t0);
        auto t1 = clk::now();
        bs.run(x);
        double d1 = msSince(t1);
        if (i >= warmup) { ei.push_back(d0); b.push_back(d1); }
      }
      r["engine_infer"] = pct(ei);
      r["bare"] = pct(b);
      r["ratio"] = percentile(ei, 50) / percentile(b, 50);
      rep["engines"][task] = r;
      std::cerr << task << ": engine_infer p50 " << percentile(ei, 50) << " ms, bare " << percentile(b, 50) << " ms\n";
    };
    if (p.macro()) row("macro", *p.macro(), [&](size_t i) { p.macro()->predict(frames[i]); });
    if (p.au()) row("au", *p.au(), [&](size_t i) { p.au()->predict(frames[i]); });
    if (p.micro()) {
      MicroEngine& me = *p.micro();
      size_t s = me.stride();
      me.setStride(1);   // a window on every push once full: the per-inference cost
      for (int i = 0; i < 16; ++i) me.push(frames[0], "bench");
      row("micro", me, [&](size_t i) { me.push(frames[i], "bench"); });
      me.setStride(s);
      me.reset();
    }
    if (p.spotting()) row("spotting", *p.spotting(), nullptr);
    // total per frame through the pipeline, as facelab_run does it
    std::vector<double> total;
    for (int i = 0; i < warmup + iters; ++i) {
      auto r = p.process(frames[static_cast<size_t>(i) % frames.size()], "bench");
      if (i >= warmup) total.push_back(r.latency_ms["total"]);
    }
    rep["total_per_frame"] = pct(total);
#ifdef FACELAB_HAVE_DLIB
    if (cfg.face.detect) {   // the FaceFrontEnd on raw frames: detection + landmarks + alignment, and the refit only
      if (face_input.empty()) throw std::invalid_argument("the config has a face section: give --face-input RAW_FRAMES");
      FaceFrontEnd fe(cfg.face);
      const FaceTemplate& t = fe.templates().get(cfg.face.template_name);
      std::vector<cv::Mat> raw;
      FrameSource src(face_input);
      cv::Mat f;
      std::string n;
      while (src.next(f, n)) raw.push_back(f.clone());
      size_t k = 0, found = 0;
      auto full = timeIt([&] {
        auto faces = fe.detect(raw[k++ % raw.size()]);
        if (!faces.empty()) { ++found; fe.align(raw[(k - 1) % raw.size()], faces[0], t); }
      }, warmup, iters);
      if (!found) throw std::runtime_error(face_input + ": no face found in the bench frames");
      auto faces = fe.detect(raw[0]);
      Face face = faces.empty() ? Face{} : faces[0];
      auto refit = timeIt([&] {
        face.landmarks = fe.landmarks(raw[0], face.box);
        fe.align(raw[0], face, t);
      }, warmup, iters);
      rep["face"] = {{"detect_landmarks_align", pct(full)}, {"landmarks_align", pct(refit)}, {"template", t.name},
                     {"frame_size", {raw[0].cols, raw[0].rows}}, {"every", cfg.face.every}};
      std::cerr << "face: detect+landmarks+align p50 " << percentile(full, 50) << " ms\n";
    }
#endif
    std::string s = rep.dump(1);
    if (!out.empty()) {
      std::ofstream f(out);
      if (!f) throw std::runtime_error(out + ": cannot write");
      f << s << "\n";
    }
    std::cout << s << "\n";
    return 0;
  } catch (const std::invalid_argument& e) {
    std::cerr << "facelab_bench: " << e.what() << "\nusage: facelab_bench --config engine.json [--input DIR|VIDEO] "
                 "[--iters 200] [--warmup 20] [--out bench.json] [--face-input RAW_FRAMES]\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "facelab_bench: error: " << e.what() << "\n";
    return 2;
  }
}
