#include "facelab/config.h"

#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

namespace fs = std::filesystem;
using nlohmann::json;

namespace facelab {
namespace {

const char* kTasks[] = {"macro", "micro", "au", "spotting"};

template <class T>
T get(const json& j, const char* key, const T& dflt, const std::string& where) {
  if (!j.contains(key)) return dflt;
  try {
    return j.at(key).get<T>();
  } catch (const json::exception& e) {
    throw ConfigError(where + "." + key + ": " + e.what());
  }
}

void checkKeys(const json& j, const std::vector<std::string>& known, const std::string& where) {
  for (auto it = j.begin(); it != j.end(); ++it)
    if (std::find(known.begin(), known.end(), it.key()) == known.end())
      throw ConfigError(where + ": unknown key '" + it.key() + "'");
}

}  // namespace

EngineConfig parseConfig(const std::string& text, const std::string& base_dir, const std::string& name) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::parse_error& e) {
    throw ConfigError(name + ": not valid JSON (" + e.what() + ")");
  }
  if (!j.is_object()) throw ConfigError(name + ": the config must be a JSON object");
  checkKeys(j, {"version", "threads", "models", "optical_flow_spotter", "face"}, name);
  int version = get<int>(j, "version", 1, name);
  if (version != 1) throw ConfigError(name + ": version " + std::to_string(version) + " is not supported (1 is)");
  EngineConfig c;
  c.file = name;
  if (j.contains("threads")) {
    const json& t = j["threads"];
    if (!t.is_object()) throw ConfigError(name + ".threads: must be an object {intra_op, inter_op}");
    checkKeys(t, {"intra_op", "inter_op"}, name + ".threads");
    c.threads.intra_op = get<int>(t, "intra_op", 1, name + ".threads");
    c.threads.inter_op = get<int>(t, "inter_op", 1, name + ".threads");
    if (c.threads.intra_op < 0 || c.threads.inter_op < 0) throw ConfigError(name + ".threads: counts must be >= 0");
  }
  if (j.contains("optical_flow_spotter")) {
    const json& f = j["optical_flow_spotter"];
    std::string w = name + ".optical_flow_spotter";
    if (!f.is_object()) throw ConfigError(w + ": must be an object");
    checkKeys(f, {"threshold", "min_frames", "max_frames"}, w);
    c.flow.threshold = get<double>(f, "threshold", c.flow.threshold, w);
    c.flow.min_frames = get<int>(f, "min_frames", c.flow.min_frames, w);
    c.flow.max_frames = get<int>(f, "max_frames", c.flow.max_frames, w);
    if (c.flow.min_frames < 1 || c.flow.max_frames < c.flow.min_frames)
      throw ConfigError(w + ": need 1 <= min_frames <= max_frames");
  }
  if (j.contains("face")) {
    const json& f = j["face"];
    std::string w = name + ".face";
    if (!f.is_object()) throw ConfigError(w + ": must be an object {detect, every, templates, template, ...}");
    checkKeys(f, {"detect", "every", "templates", "template", "shape_predictor", "upsample", "min_score", "max_side"}, w);
    FaceConfig& fc = c.face;
    fc.detect = get<bool>(f, "detect", true, w);
    fc.every = get<int>(f, "every", 1, w);
    if (fc.every < 1) throw ConfigError(w + ".every: must be >= 1");
    auto resolve = [&](std::string p) {
      if (p.empty()) return p;
      fs::path q(p);
      if (q.is_relative()) q = fs::path(base_dir) / q;
      return q.lexically_normal().string();
    };
    fc.templates = resolve(get<std::string>(f, "templates", "", w));
    if (fc.detect && fc.templates.empty())
      throw ConfigError(w + ".templates: missing (the JSON of alignment templates, written by cpp/tools/face_templates.py)");
    fc.template_name = get<std::string>(f, "template", "macro", w);
    fc.shape_predictor = resolve(get<std::string>(f, "shape_predictor", "", w));
    fc.upsample = get<int>(f, "upsample", -1, w);
    fc.min_score = get<double>(f, "min_score", 0.1, w);
    fc.max_side = get<int>(f, "max_side", 1280, w);
    if (fc.max_side < 32) throw ConfigError(w + ".max_side: must be >= 32");
  }
  if (!j.contains("models") || !j["models"].is_object() || j["models"].empty())
    throw ConfigError(name + ": 'models' must map tasks (macro, micro, au, spotting) to {\"path\": ...}");
  for (auto it = j["models"].begin(); it != j["models"].end(); ++it) {
    const std::string task = it.key(), w = name + ".models." + task;
    if (std::find(std::begin(kTasks), std::end(kTasks), task) == std::end(kTasks))
      throw ConfigError(w + ": unknown task (macro, micro, au, spotting)");
    const json& m = it.value();
    if (!m.is_object()) throw ConfigError(w + ": must be an object with a 'path'");
    checkKeys(m, {"path", "sha256", "preprocess", "stride", "thresholds", "fps"}, w);
    ModelConfig mc;
    mc.path = get<std::string>(m, "path", "", w);
    if (mc.path.empty()) throw ConfigError(w + ".path: missing");
    fs::path p(mc.path);
    if (p.is_relative()) p = fs::path(base_dir) / p;
    mc.path = p.lexically_normal().string();
    mc.sha256 = get<std::string>(m, "sha256", "", w);
    mc.stride = get<int>(m, "stride", 4, w);
    if (mc.stride < 1) throw ConfigError(w + ".stride: must be >= 1");
    mc.fps = get<double>(m, "fps", 30.0, w);
    if (!(mc.fps > 0)) throw ConfigError(w + ".fps: must be > 0");
    mc.thresholds = get<std::map<std::string, float>>(m, "thresholds", {}, w);
    for (auto& [au, t] : mc.thresholds)
      if (!(t >= 0.f && t <= 1.f)) throw ConfigError(w + ".thresholds." + au + ": must be in [0, 1]");
    if (m.contains("preprocess")) {
      const json& pp = m["preprocess"];
      std::string wp = w + ".preprocess";
      if (!pp.is_object()) throw ConfigError(wp + ": must be an object");
      checkKeys(pp, {"mean", "std", "color_order"}, wp);
      if (pp.contains("mean")) mc.preprocess.mean = get<std::vector<float>>(pp, "mean", {}, wp);
      if (pp.contains("std")) mc.preprocess.std = get<std::vector<float>>(pp, "std", {}, wp);
      if (pp.contains("color_order")) mc.preprocess.color_order = get<std::string>(pp, "color_order", "RGB", wp);
      if (mc.preprocess.color_order && *mc.preprocess.color_order != "RGB" && *mc.preprocess.color_order != "BGR")
        throw ConfigError(wp + ".color_order: must be RGB or BGR");
    }
    c.models[task] = mc;
  }
  return c;
}

EngineConfig loadConfig(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ConfigError(path + ": cannot read the config file");
  std::stringstream ss;
  ss << in.rdbuf();
  fs::path base = fs::absolute(fs::path(path)).parent_path();
  return parseConfig(ss.str(), base.string(), path);
}

}  // namespace facelab
