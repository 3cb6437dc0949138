// facelab_run: every configured engine over a frame folder or a video; one JSON line per frame (schema: cpp/README.md).
//   facelab_run --config engine.json --input FRAMES_DIR|VIDEO [--out out.jsonl] [--features F.csv|F.bin] [--track ID]
//               [--watch-config]
//   facelab_run --ab old.json new.json --input FRAMES_DIR|VIDEO [--out report.json] [--features ...]
#include <chrono>
#include <cstring>
#include <iostream>

#include "tool_common.h"

using namespace facelab;
using namespace facelab::tools;

namespace {

const char* kUsage =
    "usage: facelab_run --config engine.json --input FRAMES_DIR|VIDEO [--out out.jsonl] [--features F.csv|F.bin]\n"
    "                   [--track ID] [--watch-config]\n"
    "       facelab_run --ab old.json new.json --input FRAMES_DIR|VIDEO [--out report.json] [--features ...]\n"
    "Every frame is a face crop, unless the config has a \"face\" section (dlib detection + alignment on raw frames).\n"
    "The config comes from `facelab serve-config`.\n";

struct Args {
  std::string config, ab_old, ab_new, input, out, features, track;
  bool watch = false;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(k + " needs a value");
      return argv[++i];
    };
    if (k == "--config") a.config = val();
    else if (k == "--ab") { a.ab_old = val(); a.ab_new = val(); }
    else if (k == "--input") a.input = val();
    else if (k == "--out") a.out = val();
    else if (k == "--features") a.features = val();
    else if (k == "--track") a.track = val();
    else if (k == "--watch-config") a.watch = true;
    else if (k == "-h" || k == "--help") { std::cout << kUsage; std::exit(0); }
    else throw std::invalid_argument("unknown argument " + k);
  }
  if (a.input.empty()) throw std::invalid_argument("--input is required");
  if (a.config.empty() == a.ab_old.empty()) throw std::invalid_argument("give --config or --ab old.json new.json");
  return a;
}

void loadPipeline(Pipeline& p, const std::string& cfg) {
  auto errors = p.apply(loadConfig(cfg));
  if (!errors.empty()) {
    std::string msg;
    for (auto& e : errors) msg += "\n  " + e;
    throw std::runtime_error(cfg + ": models failed to load:" + msg);
  }
}

std::vector<std::vector<float>> features(Pipeline& p, const std::string& path) {
  if (path.empty() || !p.spotting()) return {};
  return readFeatures(path, p.spotting()->featureCount());
}

int run(const Args& a) {
  Pipeline p;
  loadPipeline(p, a.config);
  auto feats = features(p, a.features);
  std::ofstream fout;
  if (!a.out.empty()) {
    fout.open(a.out);
    if (!fout) throw std::runtime_error(a.out + ": cannot write");
  }
  std::ostream& out = a.out.empty() ? std::cout : fout;
  auto mtime = fs::last_write_time(a.config);
  FrameSource src(a.input);
  FaceStage face(p.config());
  cv::Mat frame, crop;
  std::string name;
  size_t i = 0;
  while (src.next(frame, name)) {
    if (a.watch && fs::last_write_time(a.config) != mtime) {   // live config: only changed models reload
      mtime = fs::last_write_time(a.config);
      try {
        auto errors = p.apply(loadConfig(a.config));
        std::cerr << "facelab_run: config reloaded at frame " << i << (errors.empty() ? "" : "; kept old models for:");
        for (auto& e : errors) std::cerr << "\n  " << e;
        std::cerr << "\n";
      } catch (const ConfigError& e) {
        std::cerr << "facelab_run: config not applied (kept the running one): " << e.what() << "\n";
      }
    }
    const std::vector<float>* f = i < feats.size() ? &feats[i] : nullptr;
    json info;
    double face_ms = 0;
    if (!face.crop(frame, crop, info, face_ms)) {   // raw frame without a face: no engine runs
      out << json({{"frame", i}, {"source", name}, {"face", nullptr}, {"latency_ms", {{"face", face_ms}}}}).dump() << "\n";
      ++i;
      continue;
    }
    json j = toJson(p, p.process(crop, a.track, f), name);
    if (face.active()) {
      j["face"] = info["face"];
      j["latency_ms"]["face"] = face_ms;
      j["latency_ms"]["total"] = j["latency_ms"]["total"].get<double>() + face_ms;
    }
    out << j.dump() << "\n";
    ++i;
  }
  auto end = p.finish();
  json j = {{"end", true}, {"frames", i}, {"flow", {{"intervals", toJson(end.flow)}}}};
  if (p.spotting()) j["spotting"] = toJson(end.spotting);
  out << j.dump() << "\n";
  std::cerr << "facelab_run: " << i << " frames" << (a.out.empty() ? "" : " -> " + a.out) << "\n";
  return 0;
}

int ab(const Args& a) {
  Pipeline po, pn;
  loadPipeline(po, a.ab_old);
  loadPipeline(pn, a.ab_new);
  auto fo = features(po, a.features), fn = features(pn, a.features);
  FrameSource src(a.input);
  FaceStage face(po.config());   // the old config's face section makes the crops both model sets see
  cv::Mat frame, crop;
  std::string name;
  size_t n = 0, macro_n = 0, macro_agree = 0, micro_n = 0, micro_agree = 0, au_n = 0, au_agree = 0;
  double macro_maxdiff = 0;
  std::map<std::string, std::vector<double>> lat_old, lat_new;
  size_t spot_old = 0, spot_new = 0, flow_old = 0, flow_new = 0;
  while (src.next(frame, name)) {
    json info;
    double face_ms = 0;
    if (!face.crop(frame, crop, info, face_ms)) { ++n; continue; }
    auto ro = po.process(crop, a.track, n < fo.size() ? &fo[n] : nullptr);
    auto rn = pn.process(crop, a.track, n < fn.size() ? &fn[n] : nullptr);
    for (auto& [k, v] : ro.latency_ms) lat_old[k].push_back(v);
    for (auto& [k, v] : rn.latency_ms) lat_new[k].push_back(v);
    if (ro.macro && rn.macro) {
      ++macro_n;
      macro_agree += ro.macro->label_name == rn.macro->label_name;
      for (size_t c = 0; c < std::min(ro.macro->probs.size(), rn.macro->probs.size()); ++c)
        macro_maxdiff = std::max(macro_maxdiff, static_cast<double>(std::fabs(ro.macro->probs[c] - rn.macro->probs[c])));
    }
    if (ro.micro && rn.micro) {
      ++micro_n;
      micro_agree += ro.micro->label_name == rn.micro->label_name;
    }
    if (ro.au && rn.au) {
      std::map<std::string, bool> on;
      for (auto& x : *ro.au) on[x.au] = x.present;
      for (auto& x : *rn.au)
        if (on.count(x.au)) { ++au_n; au_agree += on[x.au] == x.present; }
    }
    spot_old += ro.spotting.size(); spot_new += rn.spotting.size();
    flow_old += ro.flow.size(); flow_new += rn.flow.size();
    ++n;
  }
  auto eo = po.finish(), en = pn.finish();
  spot_old += eo.spotting.size(); spot_new += en.spotting.size();
  auto frac = [](size_t k, size_t m) -> json { return m ? json(static_cast<double>(k) / static_cast<double>(m)) : json(nullptr); };
  json rep = {{"old", a.ab_old}, {"new", a.ab_new}, {"input", a.input}, {"frames", n},
              {"agreement", {{"macro_label", frac(macro_agree, macro_n)}, {"macro_max_abs_prob_diff", macro_maxdiff},
                             {"micro_label", frac(micro_agree, micro_n)}, {"micro_windows", micro_n},
                             {"au_presence", frac(au_agree, au_n)}}},
              {"intervals", {{"spotting_old", spot_old}, {"spotting_new", spot_new}, {"flow_old", flow_old}, {"flow_new", flow_new}}}};
  json lat = json::object();
  for (auto& [k, v] : lat_old) {
    json e = {{"old", pct(v)}};
    if (lat_new.count(k)) {
      e["new"] = pct(lat_new[k]);
      e["p50_diff_ms"] = percentile(lat_new[k], 50) - percentile(v, 50);
    }
    lat[k] = e;
  }
  rep["latency_ms"] = lat;
  std::string s = rep.dump(1);
  if (!a.out.empty()) {
    std::ofstream f(a.out);
    if (!f) throw std::runtime_error(a.out + ": cannot write");
    f << s << "\n";
  }
  std::cout << s << "\n";
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse(argc, argv);
    return a.config.empty() ? ab(a) : run(a);
  } catch (const std::invalid_argument& e) {
    std::cerr << "facelab_run: " << e.what() << "\n" << kUsage;
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "facelab_run: error: " << e.what() << "\n";
    return 2;
  }
}
