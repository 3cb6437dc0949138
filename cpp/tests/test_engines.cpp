// Golden outputs (Python onnxruntime, 1e-5), FrameBuffer semantics, reloads of good and bad models, config parsing.
// Usage: facelab_tests <golden|frame_buffer|reload|config|spotting|pipeline|weights> MODELS_DIR
#include <opencv2/imgcodecs.hpp>

#include "facelab/au_engine.h"
#include "facelab/config.h"
#include "facelab/macro_engine.h"
#include "facelab/micro_engine.h"
#include "facelab/onnx_weights.h"
#include "facelab/pipeline.h"
#include "facelab/spotting_engine.h"
#include "testing.h"

using namespace facelab;
using ftest::maxAbsDiff;
using ftest::readBin;
using ftest::readJson;

static std::string D;
static const float TOL = 1e-5f;

static cv::Mat img(const std::string& f) {
  cv::Mat m = cv::imread(D + "/" + f, cv::IMREAD_COLOR);
  CHECK(!m.empty(), "cannot read " << f);
  return m;
}

static void goldenImage(const std::string& name) {
  auto g = readJson(D + "/" + name + ".golden.json");
  const bool au = name == "au";
  MacroEngine macro;
  AuEngine aue;
  EngineBase& e = au ? static_cast<EngineBase&>(aue) : macro;
  std::string err = e.reloadModel(D + "/" + name + ".onnx");
  CHECK(err.empty(), err);
  for (auto& c : g["cases"]) {
    cv::Mat im = img(c["files"][0]);
    auto x_ref = readBin(D + "/" + c["input"].get<std::string>());
    if (!au) {
      Tensor x = macro.preprocess(im);
      float dx = maxAbsDiff(x.data, x_ref);
      CHECK(dx == 0.f, name << ": preprocessing differs from facelab.predict by " << dx);
      auto r = macro.predict(im);
      float d = maxAbsDiff(r.logits, readBin(D + "/" + c["outputs"][0].get<std::string>()));
      CHECK(d <= TOL, name << ": logits differ from Python onnxruntime by " << d);
      float s = 0;
      for (float p : r.probs) s += p;
      CHECK(std::fabs(s - 1.f) < 1e-5f && r.probs.size() == 7, "probabilities must sum to 1");
      auto r2 = macro.predict(cv::Mat(cv::Mat::zeros(im.rows + 20, im.cols + 30, CV_8UC3)), cv::Rect(0, 0, 5, 5));
      CHECK(r2.probs.size() == 7, "frame + box path");
      cv::Mat frame = cv::Mat::zeros(im.rows + 20, im.cols + 30, CV_8UC3);
      im.copyTo(frame(cv::Rect(10, 7, im.cols, im.rows)));
      auto r3 = macro.predict(frame, cv::Rect(10, 7, im.cols, im.rows));
      CHECK(maxAbsDiff(r3.logits, r.logits) == 0.f, "frame + box gives the crop's result");
    } else {
      auto res = aue.predict(im);
      auto p_ref = readBin(D + "/" + c["outputs"][0].get<std::string>());
      auto i_ref = readBin(D + "/" + c["outputs"][1].get<std::string>());
      CHECK(res.size() == 17, "17 AUs");
      std::vector<float> p, in;
      for (auto& a : res) { p.push_back(a.probability); in.push_back(a.intensity); }
      CHECK(maxAbsDiff(p, p_ref) <= TOL, "au_prob differs by " << maxAbsDiff(p, p_ref));
      CHECK(maxAbsDiff(in, i_ref) <= TOL, "au_intensity differs by " << maxAbsDiff(in, i_ref));
      for (size_t i = 0; i < res.size(); ++i) {
        float thr = 0.3f + 0.02f * static_cast<float>(i);   // from the metadata (make_models.py)
        CHECK(std::fabs(res[i].threshold - thr) < 1e-6f, res[i].au << " threshold " << res[i].threshold);
        CHECK(res[i].present == (res[i].probability >= thr), res[i].au << " presence");
      }
    }
  }
  if (au) {   // config thresholds override the metadata; an AU the model lacks is an error
    auto m = aue.snapshot();
    aue.setThresholds({{m->info.class_names[0], 0.0f}, {m->info.class_names[1], 1.0f}});
    auto res = aue.predict(img(g["cases"][0]["files"][0]));
    CHECK(res[0].present && res[0].threshold == 0.0f, "threshold 0 -> present");
    CHECK(!res[1].present || res[1].probability >= 1.0f, "threshold 1 -> absent");
    bool threw = false;
    try { aue.setThresholds({{"AU999", 0.5f}}); } catch (const std::invalid_argument&) { threw = true; }
    CHECK(threw, "unknown AU threshold must fail");
  }
  std::cout << name << ": golden ok\n";
}

static void golden() {
  for (auto n : {"macro", "macro_b", "macro_bgr", "au"}) goldenImage(n);
  // micro: push the 16 frames of each clip; a new track resets the buffer
  auto g = readJson(D + "/micro.golden.json");
  MicroEngine micro({}, 4);
  std::string err = micro.reloadModel(D + "/micro.onnx");
  CHECK(err.empty(), err);
  int k = 0;
  for (auto& c : g["cases"]) {
    std::optional<MicroResult> r;
    size_t i = 0;
    for (auto& f : c["files"]) {
      r = micro.push(img(f), "track" + std::to_string(k));
      CHECK(r.has_value() == (i == 15), "a window is due exactly when the 16th frame arrives (frame " << i << ")");
      ++i;
    }
    float d = maxAbsDiff(r->logits, readBin(D + "/" + c["outputs"][0].get<std::string>()));
    CHECK(d <= TOL, "micro logits differ from Python onnxruntime by " << d);
    CHECK(r->probs.size() == 3 && r->last_frame == 15, "3 classes, newest frame 15");
    ++k;
  }
  std::cout << "micro: golden ok\n";
}

static void frameBuffer() {
  FrameBuffer b(4, 2, 1);
  std::vector<int> due;
  for (int i = 0; i < 10; ++i)
    if (b.push(std::vector<float>{static_cast<float>(i)})) due.push_back(i);
  CHECK((due == std::vector<int>{3, 5, 7, 9}), "due on the filling frame, then every stride frames");
  std::vector<float> w(4);
  b.window(w.data());
  CHECK((w == std::vector<float>{6, 7, 8, 9}), "window is the last 4 frames, oldest first");
  b.reset();
  CHECK(!b.full() && b.pushed() == 0, "reset empties the buffer");
  due.clear();
  for (int i = 0; i < 6; ++i)
    if (b.push(std::vector<float>{static_cast<float>(100 + i)})) due.push_back(i);
  CHECK((due == std::vector<int>{3, 5}), "after a reset the buffer fills again before the next window");
  b.window(w.data());
  CHECK((w == std::vector<float>{102, 103, 104, 105}), "no frame of the old track survives a reset");
  FrameBuffer s1(16, 1, 1);
  int n = 0;
  for (int i = 0; i < 20; ++i) n += s1.push(std::vector<float>{0.f});
  CHECK(n == 5, "stride 1: a window on every frame once full (got " << n << ")");
  bool threw = false;
  try { s1.push(std::vector<float>{1.f, 2.f}); } catch (const std::invalid_argument&) { threw = true; }
  CHECK(threw, "a frame of the wrong size is rejected");
  threw = false;
  try { FrameBuffer bad(16, 0, 1); } catch (const std::invalid_argument&) { threw = true; }
  CHECK(threw, "stride 0 is rejected");
  // engine level: stride from the config, reset on a new track
  MicroEngine micro({}, 3);
  CHECK(micro.reloadModel(D + "/micro.onnx").empty(), "micro loads");
  cv::Mat f = img("micro_0_00.png");
  std::vector<int> at;
  for (int i = 0; i < 24; ++i)
    if (micro.push(f, "a")) at.push_back(i);
  CHECK((at == std::vector<int>{15, 18, 21}), "stride 3 after the first window");
  at.clear();
  for (int i = 0; i < 17; ++i)
    if (micro.push(f, i < 10 ? "a" : "b")) at.push_back(i);
  CHECK((at == std::vector<int>{0, 3, 6, 9}), "track a goes on every 3 frames; track b (from frame 10) has 7 frames: no window");
  std::cout << "frame buffer ok\n";
}

static std::vector<float> logitsOf(const MacroEngine& e, const cv::Mat& im) { return e.predict(im).logits; }

static void reload() {
  auto g = readJson(D + "/macro.golden.json");
  cv::Mat im = img(g["cases"][0]["files"][0]);
  auto ref = readBin(D + "/" + g["cases"][0]["outputs"][0].get<std::string>());
  MacroEngine e;
  bool threw = false;
  try { e.predict(im); } catch (const ModelError&) { threw = true; }
  CHECK(threw, "predict without a model fails clearly");
  CHECK(!e.reloadModel(D + "/bad_corrupt.onnx").empty() && !e.loaded(), "a bad first model leaves the engine empty");
  CHECK(e.reloadModel(D + "/macro.onnx").empty(), "good model");
  CHECK(maxAbsDiff(logitsOf(e, im), ref) <= TOL, "good model serves its outputs");
  struct Bad { std::string file, expect; };
  std::vector<Bad> bad = {{"bad_corrupt.onnx", "cannot load"},
                          {"bad_shape.onnx", "must be [batch, 3, H, W]"},
                          {"bad_nometa.onnx", "metadata key 'task' missing"},
                          {"bad_nan.onnx", "not finite"},
                          {"bad_weights.onnx", "weights do not match the weights_sha256"},
                          {"au.onnx", "metadata task is 'au'"},
                          {"does_not_exist.onnx", "not found"}};
  for (auto& b : bad) {
    std::string err = e.reloadModel(D + "/" + b.file);
    CHECK(!err.empty(), b.file << " must be rejected");
    CHECK(err.find(b.expect) != std::string::npos, b.file << ": error '" << err << "' lacks '" << b.expect << "'");
    CHECK(err.find(b.file) != std::string::npos, "the error names the file: " << err);
    CHECK(e.snapshot()->generation == 1 && e.snapshot()->info.path == D + "/macro.onnx", "old model still loaded");
    CHECK(maxAbsDiff(logitsOf(e, im), ref) <= TOL, "old model keeps serving after " << b.file);
    std::cout << "rejected " << b.file << ": " << err << "\n";
  }
  // sha256 from the config
  ModelConfig mc;
  mc.path = D + "/macro_b.onnx";
  mc.sha256 = std::string(64, '0');
  std::string err = e.reloadModel(mc);
  CHECK(err.find("sha256") != std::string::npos, "a sha256 mismatch is rejected: " << err);
  mc.sha256 = sha256File(mc.path);
  CHECK(e.reloadModel(mc).empty(), "matching sha256 loads");
  auto gb = readJson(D + "/macro_b.golden.json");
  CHECK(maxAbsDiff(logitsOf(e, img(gb["cases"][0]["files"][0])),
                   readBin(D + "/" + gb["cases"][0]["outputs"][0].get<std::string>())) <= TOL,
        "the new model serves after a good reload");
  CHECK(e.snapshot()->generation == 2, "generation counts successful loads");
  // preprocessing override from the config: BGR order on an RGB model changes the input
  mc.preprocess.color_order = "BGR";
  CHECK(e.reloadModel(mc).empty(), "override loads");
  CHECK(e.snapshot()->info.pre.color_order == "BGR", "override applied");
  std::cout << "reload ok\n";
}

static void config() {
  auto c = parseConfig(R"({"version": 1, "threads": {"intra_op": 2},
      "models": {"macro": {"path": "m.onnx", "sha256": "ab"}, "micro": {"path": "/x/u.onnx", "stride": 8},
                 "au": {"path": "a.onnx", "thresholds": {"AU1": 0.4}}}})", "/base", "t.json");
  CHECK(c.threads.intra_op == 2 && c.threads.inter_op == 1, "threads");
  CHECK(c.models.at("macro").path == "/base/m.onnx", "relative paths resolve against the config folder");
  CHECK(c.models.at("micro").path == "/x/u.onnx" && c.models.at("micro").stride == 8, "micro");
  CHECK(c.models.at("au").thresholds.at("AU1") == 0.4f, "thresholds");
  auto expectFail = [](const std::string& text, const std::string& what) {
    try {
      parseConfig(text, "/b", "bad.json");
    } catch (const ConfigError& e) {
      CHECK(std::string(e.what()).find(what) != std::string::npos, "error '" << e.what() << "' lacks '" << what << "'");
      CHECK(std::string(e.what()).find("bad.json") != std::string::npos, "error names the file");
      return;
    }
    CHECK(false, "config should fail: " << text);
  };
  expectFail("{", "not valid JSON");
  expectFail(R"({"models": {}})", "'models'");
  expectFail(R"({"models": {"macro": {"path": "m", "strid": 2}}})", "unknown key 'strid'");
  expectFail(R"({"models": {"face": {"path": "m"}}})", "unknown task");
  expectFail(R"({"models": {"micro": {"path": "m", "stride": 0}}})", "stride");
  expectFail(R"({"models": {"macro": {"path": "m", "preprocess": {"color_order": "XYZ"}}}})", "color_order");
  expectFail(R"({"models": {"macro": {"path": 3}}})", "models.macro.path");
  ModelConfig a, b;
  a.path = b.path = "/m";
  b.stride = 9;
  CHECK(!ModelConfig::needsReload(a, b), "a stride change needs no reload");
  b.sha256 = "x";
  CHECK(ModelConfig::needsReload(a, b), "a new hash needs a reload");
  std::cout << "config ok\n";
}

static void spotting() {
  SpottingEngine e;
  CHECK(e.reloadModel(D + "/spotting.onnx").empty(), "spotting loads");
  const size_t F = e.featureCount();
  // one raw window against Python onnxruntime
  Tensor x;
  x.shape = {1, 256, static_cast<int64_t>(F)};
  x.data = readBin(D + "/spotting_0.in.bin");
  auto y = e.runTensor(x);
  for (size_t j = 0; j < y.size(); ++j) {
    float d = maxAbsDiff(y[j].data, readBin(D + "/spotting_0.out" + std::to_string(j) + ".bin"));
    CHECK(d <= TOL, "spotting output " << j << " differs by " << d);
  }
  e.keepScores(true);
  // online over 300 frames: the scores equal predict_scores' except where its end-aligned window reaches
  auto feats = readBin(D + "/spotting_features.bin");
  auto ref = readBin(D + "/spotting_scores.bin");
  const size_t T = feats.size() / F, K3 = ref.size() / T;
  std::vector<SpotInterval> got;
  int64_t first_final = -1;
  for (size_t t = 0; t < T; ++t) {
    auto iv = e.push(std::vector<float>(feats.begin() + t * F, feats.begin() + (t + 1) * F));
    for (auto& i : iv)
      CHECK(static_cast<int64_t>(t) - i.offset <= e.latencyFrames(), "interval emitted " << t - i.offset << " frames after its offset");
    got.insert(got.end(), iv.begin(), iv.end());
    if (first_final < 0 && !e.scores().empty()) first_final = static_cast<int64_t>(t);
  }
  CHECK(first_final == 255, "the first scores are final when the first window (256 frames) has run, got " << first_final);
  auto tail = e.flush();
  got.insert(got.end(), tail.begin(), tail.end());
  auto sc = e.scores();
  CHECK(sc.size() == T, "every frame gets scores");
  float worst = 0;
  for (size_t t = 0; t < T; ++t) {
    if (t >= 300 - 256 && t < 128) continue;   // Python also averages its end-aligned window here (documented)
    for (size_t j = 0; j < K3; ++j) worst = std::max(worst, std::fabs(sc[t][j] - ref[t * K3 + j]));
  }
  CHECK(worst <= TOL, "online scores differ from predict_scores by " << worst);
  for (auto& iv : got) CHECK(iv.onset <= iv.offset && iv.offset < static_cast<int64_t>(T), "interval in range");
  CHECK(e.latencyFrames() == 257, "documented latency bound W + 1");
  // without keepScores the engine holds a bounded number of frames, and decodes the same intervals
  SpottingEngine b;
  CHECK(b.reloadModel(D + "/spotting.onnx").empty(), "spotting loads");
  std::vector<SpotInterval> got_b;
  size_t most = 0;
  for (size_t t = 0; t < T; ++t) {
    auto iv = b.push(std::vector<float>(feats.begin() + t * F, feats.begin() + (t + 1) * F));
    got_b.insert(got_b.end(), iv.begin(), iv.end());
    most = std::max(most, b.scores().size());
  }
  auto tail_b = b.flush();
  got_b.insert(got_b.end(), tail_b.begin(), tail_b.end());
  CHECK(got_b.size() == got.size(), "same intervals with bounded memory");
  for (size_t i = 0; i < got.size(); ++i)
    CHECK(got_b[i].onset == got[i].onset && got_b[i].offset == got[i].offset && got_b[i].score == got[i].score, "interval " << i);
  CHECK(most < 64, "bounded score history: held up to " << most << " frames");
  // OpticalFlowSpotter decision rule
  OpticalFlowSpotter o({1.0, 2, 4});
  std::vector<float> mags = {0, 2, 2, 2, 0, 3, 0, 2, 2, 2, 2, 2, 0, 5, 5};
  std::vector<SpotInterval> ivs;
  for (float m : mags) { auto r = o.pushMagnitude(m); ivs.insert(ivs.end(), r.begin(), r.end()); }
  auto r = o.flush();
  ivs.insert(ivs.end(), r.begin(), r.end());
  CHECK(ivs.size() == 2, "runs of 3 and 2 frames pass, 1 and 5 do not (got " << ivs.size() << ")");
  CHECK(ivs[0].onset == 1 && ivs[0].offset == 3, "first run 1-3");
  CHECK(ivs[1].onset == 13 && ivs[1].offset == 14 && ivs[1].score == 5.f, "run at the end is closed by flush");
  OpticalFlowSpotter still;
  cv::Mat a = img("macro_0.png");
  for (int i = 0; i < 3; ++i) still.push(a);
  CHECK(still.lastMagnitude() < 0.05f, "no motion between identical frames: " << still.lastMagnitude());
  std::cout << "spotting ok (" << got.size() << " intervals)\n";
}

static void weights() {
  // the C++ weight hash equals facelab.integrity.onnx_weights_sha256 on every model (initialisers and Constant nodes)
  auto ref = readJson(D + "/weights_sha256.json");
  CHECK(ref.size() >= 8, "reference hashes");
  int with_meta = 0;
  for (auto it = ref.begin(); it != ref.end(); ++it) {
    std::string got = onnxWeightsSha256(D + "/" + it.key());
    CHECK(got == it.value().get<std::string>(), it.key() << ": C++ " << got << " vs Python " << it.value());
  }
  for (auto n : {"macro", "au", "micro", "spotting"}) {
    EngineBase* e = nullptr;
    MacroEngine m; AuEngine a; MicroEngine u; SpottingEngine s;
    std::string t = n;
    e = t == "macro" ? static_cast<EngineBase*>(&m) : t == "au" ? static_cast<EngineBase*>(&a)
      : t == "micro" ? static_cast<EngineBase*>(&u) : static_cast<EngineBase*>(&s);
    CHECK(e->reloadModel(D + "/" + t + ".onnx").empty(), t << " loads");
    with_meta += e->snapshot()->info.metadata.contains(kWeightsSha256Key);
  }
  CHECK(with_meta == 4, "facelab export writes weights_sha256 into every model");
  std::cout << "weights ok (" << ref.size() << " models)\n";
}

static void pipeline() {
  // live config apply: only the changed model reloads; a bad new model keeps the old one; cheap settings apply in place
  auto base = [&](const std::string& macro, int stride, const std::string& thr) {
    return parseConfig(R"({"models": {"macro": {"path": ")" + macro + R"("}, "micro": {"path": "micro.onnx", "stride": )" +
                       std::to_string(stride) + R"(}, "au": {"path": "au.onnx", "thresholds": {)" + thr + "}}}}",
                       D, "live.json");
  };
  Pipeline p;
  auto err = p.apply(base("macro.onnx", 4, ""));
  CHECK(err.empty(), err.front());
  auto gen = [&] { return std::vector<uint64_t>{p.macro()->snapshot()->generation, p.micro()->snapshot()->generation,
                                                p.au()->snapshot()->generation}; };
  CHECK((gen() == std::vector<uint64_t>{1, 1, 1}), "all loaded once");
  err = p.apply(base("macro_b.onnx", 4, ""));
  CHECK(err.empty() && (gen() == std::vector<uint64_t>{2, 1, 1}), "only macro reloads when only its path changes");
  err = p.apply(base("macro_b.onnx", 7, R"("AU01": 0.9)"));
  CHECK(err.empty() && (gen() == std::vector<uint64_t>{2, 1, 1}), "stride and thresholds apply without a reload");
  CHECK(p.micro()->stride() == 7, "stride applied");
  auto r = p.process(img("au_0.png"));
  CHECK(r.au && r.au->front().au == "AU01" && r.au->front().threshold == 0.9f, "threshold applied");
  err = p.apply(base("bad_nan.onnx", 7, ""));
  CHECK(err.size() == 1 && err[0].find("not finite") != std::string::npos, "a bad new model is reported");
  CHECK(p.macro()->snapshot()->info.path == D + "/macro_b.onnx", "and the old macro model keeps serving");
  auto c = base("macro_b.onnx", 7, "");
  c.threads.intra_op = 2;
  err = p.apply(c);
  CHECK(err.empty() && (gen() == std::vector<uint64_t>{3, 2, 2}), "a thread change reloads every model");
  std::cout << "pipeline ok\n";
}

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: facelab_tests <golden|frame_buffer|reload|config|spotting|pipeline|weights> MODELS_DIR\n";
    return 2;
  }
  std::string t = argv[1];
  D = argv[2];
  if (t == "golden") golden();
  else if (t == "frame_buffer") frameBuffer();
  else if (t == "reload") reload();
  else if (t == "config") config();
  else if (t == "spotting") spotting();
  else if (t == "pipeline") pipeline();
  else if (t == "weights") weights();
  else { std::cerr << "unknown test " << t << "\n"; return 2; }
  return 0;
}
